"""Bad input matrix: every row gives one clear line on stderr, a non-zero exit, no traceback, nothing trusted."""

from __future__ import annotations

import json
import re
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


def copied_model(tmp_path, model_dir, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(model_dir, target)
    return target


def resized_config_model(tmp_path, model_dir) -> str:
    """config.json edited after saving: its hidden size no longer matches the weights."""
    target = copied_model(tmp_path, model_dir, "resized-model")
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_size=64, word_embed_proj_dim=64)
    (target / "config.json").write_text(json.dumps(config))
    return str(target)


def foreign_weights_model(tmp_path, model_dir) -> str:
    """Another model's tensors (GPT-2-style names) under the model's config."""
    from safetensors.torch import load_file, save_file

    target = copied_model(tmp_path, model_dir, "foreign-model")
    tensors = load_file(target / "model.safetensors")
    renamed = {name.replace("model.decoder.", "transformer."): t for name, t in tensors.items()}
    save_file(renamed, target / "model.safetensors", metadata={"format": "pt"})
    return str(target)


# A ChatML-like template that refuses system turns and roles out of order (as Llama-2's and Gemma's do).
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def strict_template_model(tmp_path, model_dir) -> str:
    target = copied_model(tmp_path, model_dir, "strict-template-model")
    (target / "chat_template.jinja").write_text(STRICT_TEMPLATE)
    return str(target)


def template_breaking_data(tmp_path, model_dir) -> list[str]:
    """Record 15 has two user turns in a row, which the strict template refuses."""
    turns = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    rows = GOOD_ROWS[:14] + [{"messages": turns}] + GOOD_ROWS[14:]
    rows = [r if "messages" in r else {"messages": as_messages(r)} for r in rows]
    return [
        "--model_name_or_path",
        strict_template_model(tmp_path, model_dir),
        "--prompt_template",
        "chat_template",
        "--data_path",
        write(tmp_path / "roles.jsonl", jsonl(rows)),
    ]


def as_messages(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]


def override(tmp_path, value) -> list[str]:
    return [
        "--ds_config_override",
        write(tmp_path / "o.json", value if isinstance(value, str) else json.dumps(value)),
    ]


def long_sample_flags(tmp_path, model_dir) -> list[str]:
    """A record of ~400 tokens kept at 300, past the tiny OPT's 256 positions."""
    rows = GOOD_ROWS + [{"prompt": "long?", "response": " ".join(f"w{i}x" for i in range(200))}]
    return ["--data_path", write(tmp_path / "long.jsonl", jsonl(rows)), "--max_seq_len", "300"]


DEEP = "[" * 100_000  # json.loads raises RecursionError on it


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
    ("resume-not-a-checkpoint", lambda t, m: ["--resume_from", str(t)], "no intact dschat checkpoint"),
    ("resume-nothing", lambda t, m: ["--resume"], "no intact checkpoint"),
    ("bad-override-json", lambda t, m: ["--ds_config_override", write(t / "o.json", "{bad")], "o.json"),
    # Numeric flags outside their allowed values (validation's tables).
    ("lr-nan", lambda t, m: ["--learning_rate", "nan"], "--learning_rate nan: must be a finite number > 0"),
    ("lr-inf", lambda t, m: ["--learning_rate", "inf"], "--learning_rate inf"),
    ("lr-zero", lambda t, m: ["--learning_rate", "0"], "--learning_rate 0.0"),
    ("lora-lr-nan", lambda t, m: ["--lora_learning_rate", "nan"], "--lora_learning_rate nan"),
    ("lora-lr-negative", lambda t, m: ["--lora_learning_rate=-1e-4"], "--lora_learning_rate -0.0001"),
    ("seed-negative", lambda t, m: ["--seed", "-1"], "--seed -1: must be in [0, 4294967295]"),
    ("seed-too-big", lambda t, m: ["--seed", str(2**32)], "--seed 4294967296"),
    ("dropout-above-1", lambda t, m: ["--dropout", "1.5"], "--dropout 1.5: must be in [0, 1)"),
    ("dropout-negative", lambda t, m: ["--dropout", "-0.1"], "--dropout -0.1"),
    ("lora-dropout-1", lambda t, m: ["--lora_dropout", "1"], "--lora_dropout 1.0: must be in [0, 1)"),
    ("weight-decay-negative", lambda t, m: ["--weight_decay", "-0.1"], "--weight_decay -0.1"),
    ("data-weights-negative", lambda t, m: ["--data_weights", "-1"], "--data_weights -1.0 has a negative"),
    ("dist-timeout-zero", lambda t, m: ["--dist_timeout", "0"], "--dist_timeout"),
    ("data-weights-nan", lambda t, m: ["--data_weights", "nan"], "--data_weights nan"),
    ("data-weights-all-zero", lambda t, m: ["--data_weights", "0"], "all-zero"),
    ("data-weights-count", lambda t, m: ["--data_weights", "1", "2"], "--data_weights has 2 values for 1"),
    # The tiny OPT has 256 learned positions; a longer sample would fail inside the forward pass (IndexError).
    ("max-seq-len-over-positions", long_sample_flags, "--max_seq_len 300 keeps samples of up to 300 tokens"),
    # GPT-2 counts padding positions too: rows padded to --max_seq_len (upstream's tensors) past n_positions.
    (
        "padded-past-positions",
        lambda t, m: [
            *("--model_name_or_path", str(Path(m).parent / "tiny-gpt2"), "--max_seq_len", "300"),
            "--pad_to_max_len",
        ],
        "do not fit the model's 256 positions",
    ),
    # --ds_config_override values of the wrong JSON type, named by key path and file.
    (
        "override-string-for-int",
        lambda t, m: override(t, {"train_micro_batch_size_per_gpu": "eight"}),
        '"train_micro_batch_size_per_gpu" is a string',
    ),
    (
        "override-string-for-float",
        lambda t, m: override(t, {"gradient_clipping": "x"}),
        '"gradient_clipping"',
    ),
    (
        "override-int-for-bool",
        lambda t, m: override(t, {"zero_optimization": {"overlap_comm": 1}}),
        '"zero_optimization.overlap_comm" is an integer',
    ),
    ("override-block-not-object", lambda t, m: override(t, {"zero_optimization": 2}), "expected an object"),
    ("override-top-level-array", lambda t, m: override(t, "[1, 2]"), "top level is a JSON list"),
    ("override-too-deep", lambda t, m: override(t, DEEP), "nests too deeply"),
    # Records the tokenizer's chat template refuses: the file and line, and the template's own message.
    (
        "chat-template-rejects-record",
        template_breaking_data,
        "roles.jsonl line 15: the tokenizer's chat template rejects a conversation with roles [user, user, "
        "assistant]: Conversation roles must alternate",
    ),
    # JSON nested deeper than the parser recurses: the file and the line.
    (
        "deep-jsonl",
        lambda t, m: ["--data_path", write(t / "deep.jsonl", jsonl(GOOD_ROWS) + DEEP + "\n")],
        "deep.jsonl line 21: the JSON nests too deeply",
    ),
    (
        "deep-json",
        lambda t, m: [
            "--data_path",
            write(t / "deep.json", "[\n" + jsonl(GOOD_ROWS).replace("\n", ",\n") + DEEP),
        ],
        "deep.json line 22: the JSON nests too deeply",
    ),
    # Weights that do not belong to the config: named, never silently re-initialised.
    (
        "weights-config-mismatch",
        lambda t, m: ["--model_name_or_path", resized_config_model(t, m)],
        "do not match its config.json (model.decoder.embed_tokens.weight is [304, 32] in the weights but [304, 64]",
    ),
    (
        "foreign-weights",
        lambda t, m: ["--model_name_or_path", foreign_weights_model(t, m)],
        "its weights lack",
    ),
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


def test_every_bad_value_is_reported_in_the_same_line(tmp_path, tiny_models, capsys):
    """validate_train_args collects the tables, the blend weights and the override's types before raising."""
    argv = ["--model_name_or_path", str(tiny_models["opt8"]), "--data_path", "a.jsonl", "b.jsonl"]
    argv += ["--learning_rate", "nan", "--seed", "-1", "--dropout", "2", "--data_weights", "1", "-1"]
    argv += [*override(tmp_path, {"gradient_clipping": "x"}), "--offload"]
    assert run_cli(step1.main, argv) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    for fragment in (
        "--learning_rate nan",
        "--seed -1",
        "--dropout 2.0",
        "--data_weights 1.0 -1.0",
        '"gradient_clipping"',
    ):
        assert fragment in line
    assert "--offload needs --zero_stage" in line  # and the combination checks, in the same line


@pytest.mark.parametrize(
    "eval_text, fragment",
    [
        (DEEP, "eval.json line 1: the JSON nests too deeply"),
        ('[{"prompt": "a",\n oops}]', "eval.json line 2"),
    ],
)
def test_upstreams_local_jsonfile_names_the_file_and_line(tmp_path, eval_text, fragment):
    """local/jsonfile is read by datasets (upstream's loader); its failures are located by dschat's JSON reader."""
    from dschat.errors import DschatError
    from dschat.utils.data.raw_datasets import LocalJsonFileDataset

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text(
        json.dumps([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    )
    (tmp_path / "data" / "eval.json").write_text(eval_text)
    with pytest.raises(DschatError, match=re.escape(fragment)):
        LocalJsonFileDataset(str(tmp_path / "cache"), 1234, 0, root=str(tmp_path))
