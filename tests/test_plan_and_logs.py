"""What main.py tells a user is true: the --dry_run plan is the run's, logs name what they show, errors stay short."""

from __future__ import annotations

import json
import re

import pytest
import scripts

from dschat.errors import MAX_MESSAGE_CHARS, run_cli

step1_main = scripts.step1_main()


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} times two?", "response": f"It is {2 * i}."} for i in range(40)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def flags(model, data, tmp_path, *extra):
    return scripts.main_argv(model, data, tmp_path / "cache", *extra)


def planned(log: str, key: str) -> int:
    return int(re.search(rf"\b{key}=([\d,]+)", log).group(1).replace(",", ""))


def test_dry_run_plans_the_packed_run_it_would_do(tmp_path, tiny_models, qa_file, dist_env, capsys):
    model = tiny_models["llama"]
    assert run_cli(step1_main.main, flags(model, qa_file, tmp_path, "--packing", "--dry_run")) == 0
    plan = capsys.readouterr().err
    out = tmp_path / "out"
    assert (
        run_cli(step1_main.main, flags(model, qa_file, tmp_path, "--packing", "--output_dir", str(out))) == 0
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert planned(plan, "total_updates") == rows[-1]["update_step"]
    assert planned(plan, "micro_batches_per_epoch") == len(rows)
    assert "train_rows=" in plan  # packed rows, not samples


def test_dry_run_counts_lora_and_rejects_the_scope_the_run_rejects(
    tmp_path, tiny_models, qa_file, dist_env, capsys
):
    model = tiny_models["llama"]
    assert run_cli(step1_main.main, flags(model, qa_file, tmp_path, "--dry_run")) == 0
    full = capsys.readouterr().err
    lora = ("--lora_dim", "4", "--lora_module_name", "layers.", "--only_optimize_lora", "--dry_run")
    assert run_cli(step1_main.main, flags(model, qa_file, tmp_path, *lora)) == 0
    with_lora = capsys.readouterr().err
    assert planned(with_lora, "trainable") < planned(full, "trainable") == planned(full, "parameters")
    assert planned(with_lora, "device_bytes") < planned(
        full, "device_bytes"
    )  # no optimizer states for frozen weights
    bad = ("--lora_dim", "4", "--lora_module_name", "no_such_layer", "--dry_run")
    assert run_cli(step1_main.main, flags(model, qa_file, tmp_path, *bad)) == 2
    assert "matches no nn.Linear layer" in capsys.readouterr().err


def test_logs_name_the_perplexity_and_the_lora_rate_and_eval_rows_are_kept(
    tmp_path, tiny_models, qa_file, dist_env, capsys
):
    out = tmp_path / "out"
    lora = (
        "--lora_dim",
        "4",
        "--lora_module_name",
        "layers.",
        "--only_optimize_lora",
        "--lora_learning_rate",
        "3e-4",
    )
    extra = (
        *lora,
        "--train_on_prompt",
        "false",
        "--max_steps",
        "3",
        "--output_dir",
        str(out),
        "--log_interval",
        "1",
    )
    assert run_cli(step1_main.main, flags(tiny_models["llama"], qa_file, tmp_path, *extra)) == 0
    log = capsys.readouterr().err
    assert "ppl_over=answer_tokens" in log
    assert "lora_lr=0.0003 (only LoRA parameters train)" in log
    throughput = [line for line in log.splitlines() if "TFLOPs" in line]
    assert throughput and all(" | step=" in line for line in throughput)  # one line per logged step, not two
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in evals] == [0, 1] and evals[-1]["update_step"] == 3
    assert {"perplexity", "loss", "token_perplexity", "token_loss"} <= set(evals[0])


def test_the_progress_bar_counts_to_max_steps(tmp_path, tiny_models, qa_file, dist_env, capsys):
    extra = ("--max_steps", "3", "--gradient_accumulation_steps", "2")
    assert run_cli(step1_main.main, flags(tiny_models["llama"], qa_file, tmp_path, *extra)) == 0
    bars = re.findall(r"epoch 1/1: +\d+%\|[^|]*\| (\d+)/(\d+)", capsys.readouterr().err)
    assert bars and bars[-1] == ("6", "6")  # 3 updates x 2 micro-batches, not the epoch's 18


def test_an_unrecognised_record_gives_a_short_error(tmp_path, tiny_models, dist_env, capsys):
    data = tmp_path / "odd.jsonl"
    data.write_text(json.dumps({f"field_{i}": "x" * 50 for i in range(5000)}) + "\n")
    assert run_cli(step1_main.main, flags(tiny_models["llama"], data, tmp_path, "--dry_run")) == 2
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "cannot tell the record shape" in error[0]
    assert len(error[0]) < 1000 < MAX_MESSAGE_CHARS + 100
