"""The demo pipeline end to end on a tiny model: evaluate, fine-tune through the CPU script, compare, plot."""

from __future__ import annotations

import json

import pytest

from dschat import demo
from dschat.errors import run_cli


def conversation(i: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"What is {i} plus one?"},
            {"role": "assistant", "content": f"Ahoy! It is {i + 1}. -- Pip"},
        ]
    }


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, tiny_models, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(24)))
    (data / "eval.jsonl").write_text("".join(json.dumps(conversation(100 + i)) + "\n" for i in range(4)))
    argv = [
        "--output_dir",
        str(tmp_path / "demo"),
        "--base_model",
        str(tiny_models["llama"]),
        "--data_path",
        str(data),
        "--max_new_tokens",
        "6",
        "--threads",
        "1",
        "--train_flags",
        "--max_steps 3 --max_seq_len 64 --num_train_epochs 1",
    ]
    assert run_cli(demo.main, argv) == 0
    first = capsys.readouterr()
    out = first.out
    assert "Before / after" in out and "fine-tuned" in out and "chat.py --path" in out
    assert "answer ppl" in out and "dschat.serve --path" in out
    model = tmp_path / "demo" / "model"
    assert (model / "loss_curve.png").stat().st_size > 1000
    assert len((model / "eval.jsonl").read_text().splitlines()) == 2  # plotted beside the training loss
    assert demo.model_is_complete(model)
    # A re-run reuses the fine-tuned model and both evaluations: the same table, nothing recomputed.
    assert run_cli(demo.main, argv) == 0
    again = capsys.readouterr()
    assert again.err.count("reusing its evaluation") == 2 and "reusing the fine-tuned model" in again.err
    assert again.out.split("loss curve:")[0] == out.split("loss curve:")[0]
    assert len((model / "metrics.jsonl").read_text().splitlines()) == 3
    assert run_cli(demo.main, argv) == 0  # second run: nothing retrained, evaluations reused
    log = capsys.readouterr().err
    assert "reusing the fine-tuned model" in log and log.count("reusing its evaluation") == 2
