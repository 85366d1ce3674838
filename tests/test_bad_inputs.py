"""Bad input matrix: every row gives one clear line on stderr, a non-zero exit, no traceback, nothing trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import scripts

from dschat.errors import run_cli

step1 = scripts.step1_main()

GOOD_ROWS = [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(20)]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def corrupt_model(tmp_path, model_dir) -> str:
    target = tmp_path / "corrupt-model"
    shutil.copytree(model_dir, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return str(target)


# Each row: id, a function (tmp_path, tiny model dir) -> extra flags, and a fragment of the expected message.
CASES = [
    (
        "malformed-json",
        lambda t, m: ["--data_path", write(t / "bad.jsonl", jsonl(GOOD_ROWS) + "{oops\n")],
        "line 21",
    ),
    (
        "missing-fields",
        lambda t, m: ["--data_path", write(t / "bad.jsonl", jsonl(GOOD_ROWS + [{"prompt": "x"}]))],
        "bad.jsonl",
    ),
    (
        "not-an-object",
        lambda t, m: ["--data_path", write(t / "bad.jsonl", jsonl(GOOD_ROWS) + "[1, 2]\n")],
        "bad.jsonl",
    ),
    ("empty-file", lambda t, m: ["--data_path", write(t / "empty.jsonl", "")], "empty.jsonl"),
    ("unknown-suffix", lambda t, m: ["--data_path", write(t / "data.csv", "a,b\n")], "data.csv"),
    ("missing-data-file", lambda t, m: ["--data_path", str(t / "nope.jsonl")], "does not exist"),
    ("unknown-dataset", lambda t, m: ["--data_path", "someone/unknown-set"], "unknown dataset"),
    ("bad-split-text", lambda t, m: ["--data_split", "a,b,c"], "--data_split"),
    ("bad-split-length", lambda t, m: ["--data_split", "6,4"], "--data_split"),
    ("split-without-sft", lambda t, m: ["--data_split", "0,5,5"], "phase 1"),
    ("missing-model", lambda t, m: ["--model_name_or_path", str(t / "no-model")], "--model_name_or_path"),
    ("corrupt-weights", lambda t, m: ["--model_name_or_path", corrupt_model(t, m)], "model.safetensors"),
    ("lora-without-dim", lambda t, m: ["--only_optimize_lora"], "--lora_dim"),
    (
        "lora-scope-matches-nothing",
        lambda t, m: ["--lora_dim", "4", "--lora_module_name", "nothing.here."],
        "nothing.here.",
    ),
    ("offload-zero0", lambda t, m: ["--offload", "--zero_stage", "0"], "--offload"),
    ("zero-stage-4", lambda t, m: ["--zero_stage", "4"], "--zero_stage 4"),
    ("fp16-on-cpu", lambda t, m: ["--dtype", "fp16"], "fp16"),
    (
        "unwritable-output",
        lambda t, m: ["--output_dir", str(Path(write(t / "a-file", "x")) / "out")],
        "--output_dir",
    ),
    ("resume-not-a-checkpoint", lambda t, m: ["--resume_from", str(t)], "not a dschat checkpoint"),
    ("resume-nothing", lambda t, m: ["--resume"], "no complete checkpoint"),
    ("bad-override-json", lambda t, m: ["--ds_config_override", write(t / "o.json", "{bad")], "o.json"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line_and_leaves_nothing_trusted(
    tmp_path, tiny_models, dist_env, capsys, case
):
    _, make_flags, fragment = case
    good_data = write(tmp_path / "good.jsonl", jsonl(GOOD_ROWS))
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [
        "--model_name_or_path",
        str(tiny_models["opt8"]),
        "--data_path",
        good_data,
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(cache),
        "--output_dir",
        str(out),
        "--dtype",
        "fp32",
        "--max_seq_len",
        "32",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "1",
        "--deepspeed",
    ]
    argv += make_flags(tmp_path, tiny_models["opt8"])
    assert run_cli(step1.main, argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err[-1500:]
    assert "Traceback" not in err
    assert not list(cache.glob("*data_*.npz"))
    assert not (out / "config.json").exists() and not list(out.glob("checkpoints/step*"))
