"""A full disk (a real one: a small tmpfs) while writing the data cache, the metrics, a checkpoint or the final
model: one clear line naming the path and the space, and nothing half-written left that a later run trusts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import scripts

from dschat.errors import run_cli
from dschat.utils import checkpoint

step1 = scripts.step1_main()


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of the size asked for (needs root, as CI has; skipped elsewhere)."""
    mounted = []

    def make(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("disk-data") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} times two?", "response": f"It is {2 * i}."} for i in range(400)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(model, data, out, cache, *extra) -> int:
    argv = [
        *("--model_name_or_path", str(model), "--data_path", str(data), "--data_split", "10,0,0"),
        *("--data_output_path", str(cache), "--dtype", "fp32", "--max_seq_len", "32"),
        *("--per_device_train_batch_size", "4", "--output_dir", str(out), "--deepspeed", *extra),
    ]
    return run_cli(step1.main, argv)


def the_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob(".tmp-*")]


def test_full_disk_while_caching_the_data(tmp_path, small_disk, tiny_models, data, dist_env, capsys):
    cache = small_disk("8k")
    assert run(tiny_models["opt8"], data, tmp_path / "out", cache, "--max_steps", "1") == 2
    error = the_error(capsys)
    assert "the disk is full writing file" in error and str(cache) in error and "MB free" in error, error
    assert not list(cache.glob("*.npz")) and not leftovers(cache)  # no cache a later run would trust


def test_full_disk_while_writing_metrics(tmp_path, small_disk, tiny_models, data, dist_env, capsys):
    out = small_disk("12k")
    assert run(tiny_models["opt8"], data, out, tmp_path / "cache", "--max_steps", "300") == 2
    error = the_error(capsys)
    assert "the disk is full writing the metrics file" in error and "metrics.jsonl" in error, error
    assert not (out / "config.json").exists()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(
    tmp_path, small_disk, tiny_models, data, dist_env, capsys, monkeypatch
):
    out = small_disk("1200k")
    # The space check before a checkpoint passes (another job fills the disk meanwhile, say).
    monkeypatch.setattr(checkpoint, "check_disk_space", lambda root, params: None)
    assert (
        run(tiny_models["opt8"], data, out, tmp_path / "cache", "--save_interval", "1", "--max_steps", "9")
        == 2
    )
    error = the_error(capsys)
    assert "the disk is full writing a checkpoint" in error and "needed" in error, error
    steps = out / "checkpoints"
    kept, damaged = checkpoint.intact_checkpoint(str(steps))
    assert kept is not None and not damaged and not leftovers(out)  # the last complete one, no torn one
    assert (steps / "latest").read_text() == Path(kept).name


def test_full_disk_during_the_final_save(tmp_path, small_disk, tiny_models, data, dist_env, capsys):
    out = small_disk("100k")
    assert run(tiny_models["opt8"], data, out, tmp_path / "cache", "--max_steps", "2") == 2
    error = the_error(capsys)
    assert "the disk is full writing the final model" in error, error
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert not leftovers(out)
