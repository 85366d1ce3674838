"""Never lose a run: exact resume after SIGKILL, clean SIGTERM stops, atomic checkpoints, NaN guard."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import scripts
import torch
from safetensors.torch import load_file

from dschat.errors import run_cli
from dschat.utils import checkpoint

MAIN = scripts.MAIN


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckdata") / "qa.jsonl"
    rows = [
        {"prompt": f"What is {i} times two?", "response": f"It is {2 * i}." + " ok" * (i % 4)}
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def argv(model, data, out, *extra):
    return [
        "--model_name_or_path",
        str(model),
        "--data_path",
        str(data),
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(out.parent / "cache"),
        "--dtype",
        "fp32",
        "--max_seq_len",
        "48",
        "--per_device_train_batch_size",
        "4",
        "--per_device_eval_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--num_train_epochs",
        "3",
        "--output_dir",
        str(out),
        "--deepspeed",
        *extra,
    ]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def step1_main():
    return scripts.step1_main().main


def wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", ["0", "3"])
def test_sigkill_then_resume_reproduces_the_uninterrupted_run_exactly(
    tmp_path, tiny_models, data_file, dist_env, zero_stage
):
    main = step1_main()
    flags = (
        "--save_interval",
        "2",
        "--zero_stage",
        zero_stage,
    )  # OPT keeps its dropout: RNG must be restored
    whole = tmp_path / "whole"
    assert run_cli(main, argv(tiny_models["opt"], data_file, whole, *flags)) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(MAIN), *argv(tiny_models["opt"], data_file, killed, *flags)],
        env=scripts.process_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest"
    reached = wait_for(lambda: latest.is_file() and int(latest.read_text().strip()[4:] or 0) >= 6, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached, "the run ended before a checkpoint at step 6 was seen"
    assert not (killed / "config.json").exists()

    assert run_cli(main, argv(tiny_models["opt"], data_file, killed, *flags, "--resume")) == 0
    assert losses(killed) == losses(whole)  # bit-exact, per step
    a, b = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(checkpoint.list_checkpoints(str(killed / "checkpoints"))) == 2  # --save_total_limit default


@pytest.mark.slow
def test_sigterm_finishes_the_step_checkpoints_and_exits_cleanly(tmp_path, tiny_models, data_file, dist_env):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(MAIN), *argv(tiny_models["opt8"], data_file, out, "--dropout", "0")],
        env=scripts.process_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = out / "metrics.jsonl"
    assert wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log[-2000:]
    assert "--resume" in log
    saved, damaged = checkpoint.intact_checkpoint(str(out / "checkpoints"))
    assert saved is not None and not damaged
    state = json.loads((Path(saved) / checkpoint.STATE_FILE).read_text())
    assert state["micro_step"] == len(losses(out)) and not (out / "config.json").exists()
    main = step1_main()
    assert run_cli(main, argv(tiny_models["opt8"], data_file, out, "--dropout", "0", "--resume")) == 0
    assert len(losses(out)) == 3 * 9 and (out / "config.json").exists()


def test_resume_refuses_different_settings_and_non_checkpoints(
    tmp_path, tiny_models, data_file, dist_env, capsys
):
    main = step1_main()
    out = tmp_path / "run"
    assert (
        run_cli(main, argv(tiny_models["opt8"], data_file, out, "--save_interval", "3", "--max_steps", "3"))
        == 0
    )
    capsys.readouterr()
    changed = argv(
        tiny_models["opt8"],
        data_file,
        out,
        "--save_interval",
        "3",
        "--resume",
        "--per_device_train_batch_size",
        "2",
    )
    assert run_cli(main, changed) == 2
    err = capsys.readouterr().err
    assert "global_batch: checkpoint=4 now=2" in err
    assert (
        run_cli(main, argv(tiny_models["opt8"], data_file, tmp_path / "x", "--resume_from", str(tmp_path)))
        == 2
    )
    assert "holds no intact dschat checkpoint" in capsys.readouterr().err
    assert run_cli(main, argv(tiny_models["opt8"], data_file, tmp_path / "y", "--resume")) == 2
    assert "no intact checkpoint" in capsys.readouterr().err


def test_a_failed_checkpoint_write_leaves_the_previous_one_trusted(
    tmp_path, tiny_models, data_file, dist_env, monkeypatch
):
    main = step1_main()
    out = tmp_path / "run"
    real = checkpoint.point_latest
    calls = []

    def crash_on_second(root, tag):
        calls.append(tag)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while saving")
        real(root, tag)

    monkeypatch.setattr(checkpoint, "point_latest", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_cli(main, argv(tiny_models["opt8"], data_file, out, "--save_interval", "2"))
    root = str(out / "checkpoints")
    assert checkpoint.intact_checkpoint(root) == (
        str(out / "checkpoints" / "step2"),
        [],
    )  # pointer moves last
    monkeypatch.setattr(checkpoint, "point_latest", real)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    assert run_cli(main, argv(tiny_models["opt8"], data_file, tmp_path / "full", "--save_interval", "2")) == 2
    assert not list((tmp_path / "full" / "checkpoints").glob("step*"))


def test_nan_loss_stops_with_the_step_named_or_is_skipped_a_bounded_number_of_times(
    tmp_path, tiny_models, data_file, dist_env, capsys
):
    main = step1_main()
    blowup = ("--learning_rate", "1e30", "--lr_scheduler_type", "constant", "--ds_config_override")
    override = tmp_path / "noclip.json"
    override.write_text(json.dumps({"gradient_clipping": 0.0}))
    out = tmp_path / "nan"
    before = signal.getsignal(signal.SIGTERM)
    assert run_cli(main, argv(tiny_models["opt8"], data_file, out, *blowup, str(override))) == 2
    assert (
        signal.getsignal(signal.SIGTERM) is before
    )  # a run that fails leaves no handler behind (forks inherit it)
    err = capsys.readouterr().err
    assert "the loss became NaN/inf at epoch 1 micro-step" in err and "Traceback" not in err
    assert not (out / "config.json").exists()
    out2 = tmp_path / "nan2"
    assert (
        run_cli(
            main, argv(tiny_models["opt8"], data_file, out2, *blowup, str(override), "--max_bad_steps", "2")
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("skipping it (") == 2  # two bad steps skipped, the third stops the run
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
