"""Process faults under the real ``deepspeed`` launcher with two CPU ranks: a rank that dies or freezes stops
the run within --dist_timeout naming it; SIGTERM however delivered (the launcher, the whole group, twice) ends
in one consistent checkpoint with no rank left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import scripts
from conftest import free_port

from dschat.utils import checkpoint, manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def long_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} times two?", "response": f"It is {2 * i}."} for i in range(400)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def launch(tmp_path: Path, model: Path, data: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    """Two CPU ranks training for far longer than the test, in their own process group."""
    out, log = tmp_path / "run", tmp_path / "run.log"
    env = scripts.process_env()
    cmd = [
        scripts.DEEPSPEED,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(scripts.MAIN),
        *("--model_name_or_path", str(model), "--data_path", str(data), "--data_split", "10,0,0"),
        *("--data_output_path", str(tmp_path / "cache"), "--dtype", "fp32", "--max_seq_len", "32"),
        *("--per_device_train_batch_size", "2", "--num_train_epochs", "50", "--output_dir", str(out)),
        "--deepspeed",
        *extra,
    ]
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    return proc, out, log


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def training(out: Path, steps: int = 3) -> bool:
    metrics = out / "metrics.jsonl"
    return metrics.is_file() and len(metrics.read_text().splitlines()) >= steps


def ranks_of(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    ranks = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        for arg in child.cmdline():
            if arg.startswith("--local_rank="):
                ranks[int(arg.split("=")[1])] = child
    return ranks


def gone(processes) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in processes)


def kill_all(proc: subprocess.Popen, processes) -> None:
    for p in processes:
        if p.is_running():
            p.kill()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"], ids=["dies", "freezes"])
def test_a_rank_that_dies_or_freezes_stops_the_run_naming_it(tmp_path, tiny_models, long_data, fault):
    proc, out, log = launch(
        tmp_path, tiny_models["opt8"], long_data, "--dist_timeout", "0.2", "--save_interval", "2"
    )
    processes = []
    try:
        assert wait_until(lambda: training(out) or proc.poll() is not None, 180), log.read_text()[-3000:]
        ranks = ranks_of(proc)
        processes = [psutil.Process(proc.pid), *ranks.values()]
        started = time.time()
        ranks[1].send_signal(getattr(signal, fault))
        assert wait_until(lambda: "error: rank 0:" in log.read_text(), 120), log.read_text()[-3000:]
        waited = time.time() - started
    finally:
        kill_all(proc, processes)
    error = next(line for line in log.read_text().splitlines() if line.startswith("error: rank 0:"))
    assert "rank(s) 1 stopped responding" in error and "--resume" in error, error
    assert waited < 12 + 60, waited  # --dist_timeout 0.2 min, plus the heartbeat roll call
    assert checkpoint.intact_checkpoint(str(out / "checkpoints"))[0] is not None  # the last one is kept


DELIVERIES = {
    "to-the-launcher": lambda proc, ranks: os.kill(proc.pid, signal.SIGTERM),
    "to-the-group": lambda proc, ranks: os.killpg(proc.pid, signal.SIGTERM),
    "to-the-group-twice": lambda proc, ranks: (
        os.killpg(proc.pid, signal.SIGTERM),
        time.sleep(0.3),
        os.killpg(proc.pid, signal.SIGTERM),
    ),
}


@pytest.mark.parametrize("delivery", list(DELIVERIES))
def test_sigterm_however_delivered_ends_in_one_consistent_checkpoint(
    tmp_path, tiny_models, long_data, delivery
):
    proc, out, log = launch(tmp_path, tiny_models["opt8"], long_data)
    processes = []
    try:
        assert wait_until(lambda: training(out) or proc.poll() is not None, 180), log.read_text()[-3000:]
        ranks = ranks_of(proc)
        processes = [psutil.Process(proc.pid), *ranks.values(), *psutil.Process(proc.pid).children()]
        DELIVERIES[delivery](proc, ranks)
        assert wait_until(lambda: gone(processes), 90), (
            "a process outlived the stop: " + log.read_text()[-3000:]
        )
    finally:
        kill_all(proc, processes)
    text = log.read_text()
    assert "stopped cleanly" in text and "Traceback" not in text, text[-3000:]
    saved, damaged = checkpoint.intact_checkpoint(str(out / "checkpoints"))
    assert saved is not None and not damaged
    assert manifest.verify(saved) is None
    state = json.loads((Path(saved) / checkpoint.STATE_FILE).read_text())
    steps = len((out / "metrics.jsonl").read_text().splitlines())
    assert state["update_step"] == steps  # the checkpoint is the step the metrics stop at
    assert sorted(os.listdir(out / "checkpoints")) == sorted(["latest", Path(saved).name])


def test_a_failed_data_build_stops_every_rank_at_once(tmp_path, tiny_models, long_data):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(long_data.read_text() + "{not json\n")
    proc, out, log = launch(tmp_path, tiny_models["opt8"], broken, "--dist_timeout", "10")
    try:
        proc.wait(timeout=120)  # not --dist_timeout's 10 minutes: the waiting rank learns of the failure
    finally:
        kill_all(proc, [])
    errors = [line for line in log.read_text().splitlines() if "error:" in line]
    assert proc.returncode != 0 and any("broken.jsonl" in e and "line 401" in e for e in errors), errors
    assert any("building the tokenised data failed" in e for e in errors), errors
