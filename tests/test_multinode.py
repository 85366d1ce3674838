"""Two "nodes" on loopback, each started by its own ``deepspeed --no_ssh --node_rank R`` (what a Slurm or
Kubernetes user runs on every node), train exactly like one node with two ranks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import scripts
import torch
from conftest import free_port
from safetensors.torch import load_file

from dschat.utils import checkpoint

pytestmark = pytest.mark.slow


def main_flags(model: Path, data: Path, tmp_path: Path, out: Path) -> list[str]:
    return [
        str(scripts.MAIN),
        *("--model_name_or_path", str(model), "--data_path", str(data), "--data_split", "10,0,0"),
        *("--data_output_path", str(tmp_path / "cache"), "--dtype", "fp32", "--max_seq_len", "48"),
        *("--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--max_steps", "6"),
        *("--save_interval", "3", "--dropout", "0.0", "--output_dir", str(out), "--deepspeed"),
    ]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_nodes_without_ssh_train_like_one_node_with_two_ranks(tmp_path, tiny_models):
    model, data = tiny_models["opt"], tmp_path / "varied.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}." + " yes" * (i % 5)}
        for i in range(48)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = tmp_path / "one-node"
    single = subprocess.run(
        [
            scripts.DEEPSPEED,
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            *main_flags(model, data, tmp_path, one),
        ],
        env=scripts.process_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")  # names only: --no_ssh never contacts them
    two = tmp_path / "two-nodes"
    port = str(free_port())
    nodes = [
        subprocess.Popen(
            [
                *(scripts.DEEPSPEED, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank)),
                *("--master_addr", "127.0.0.1", "--master_port", port),
                *main_flags(model, data, tmp_path, two),
            ],
            env=scripts.process_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-2000:] + logs[1][-2000:]

    assert losses(two) == pytest.approx(losses(one), abs=1e-6)  # the same maths, across "nodes"
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # Written once, by global rank 0: one checkpoint per save, intact, and one final model.
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["latest", "step3", "step6"]
    assert checkpoint.intact_checkpoint(str(two / "checkpoints")) == (str(two / "checkpoints" / "step6"), [])
    assert len(losses(two)) == 6
    # Each node's log says which rank it is; rank 1's dschat lines all carry its prefix.
    assert "rank 0 of 2: node rank 0" in logs[0] and "[rank1]" not in logs[0]
    assert "[rank1] " in logs[1] and "rank 1 of 2: node rank 1" in logs[1]
    dschat_lines = [line for line in logs[1].splitlines() if "] dschat." in line]
    assert dschat_lines and all(line.startswith("[rank1] ") for line in dschat_lines), dschat_lines[:5]
