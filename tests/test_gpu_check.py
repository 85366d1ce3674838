"""bench/gpu_check.sh: its --cpu mode runs every step of the GPU script for real; its checks can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.scripts import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_checks  # noqa: E402


def run(name, dtype, losses, status="ok", reason=""):
    return {"name": name, "dtype": dtype, "losses": losses, "status": status, "reason": reason}


def test_agree_holds_within_the_dtype_tolerance_and_fails_outside_it():
    ref = run("a", "fp32", [5.0, 4.9, 4.8])
    assert gpu_checks.agree("x", ref, run("b", "fp32", [5.0, 4.90005, 4.8]))["ok"] is True
    failed = gpu_checks.agree("x", ref, run("b", "fp32", [5.0, 4.9, 4.801]))
    assert failed["ok"] is False and "step 3" in failed["detail"]
    # bf16's tolerance is relative: 1% apart holds, 5% apart does not
    assert gpu_checks.agree("x", run("a", "bf16", [5.0]), run("b", "bf16", [5.05]))["ok"] is True
    assert gpu_checks.agree("x", run("a", "bf16", [5.0]), run("b", "bf16", [5.25]))["ok"] is False
    assert gpu_checks.agree("x", ref, run("b", "fp32", [5.0, 4.9]))["ok"] is False  # a step short


def test_a_failed_run_fails_its_checks_and_a_skipped_one_is_not_a_pass():
    ref = run("a", "fp32", [5.0])
    failed = gpu_checks.agree("x", ref, run("b", "fp32", [], "failed", "CUDA error: out of memory"))
    assert failed["ok"] is False and "out of memory" in failed["detail"]
    skipped = gpu_checks.agree("x", ref, run("b", "fp32", [], "skipped", "flash_attn is not installed"))
    assert skipped["ok"] is None and "flash_attn" in skipped["detail"]
    assert gpu_checks.trains(run("a", "fp16", [5.0, 5.1, 5.2, 5.3]))["ok"] is False  # rising
    assert gpu_checks.trains(run("a", "fp16", [5.0, float("nan"), 4.0, 3.0]))["ok"] is False


def test_without_its_packages_folder_the_gpu_mode_says_what_to_run(tmp_path):
    env = dict(os.environ, DSCHAT_GPU_PACKAGES=str(tmp_path / "missing"), PYTHON=sys.executable)
    proc = subprocess.run(["bash", ROOT / "bench" / "gpu_check.sh"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"gpu_check.sh: no {tmp_path / 'missing'} folder: run 'make gpu-packages' where PyPI is reachable "
        "and bring it along"
    ]


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_every_check_holds(tmp_path):
    before = (
        (ROOT / "bench" / "RESULTS_GPU.md").stat().st_mtime_ns
        if (ROOT / "bench" / "RESULTS_GPU.md").exists()
        else None
    )
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", ROOT / "bench" / "gpu_check.sh", "--cpu", "--out", tmp_path],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS_GPU.md", "log.txt", "results.json"]
    results = json.loads((tmp_path / "results.json").read_text())
    not_run = {c["name"] for c in results["checks"] if c["ok"] is None}
    assert not_run == {  # the packages a CPU has not: flash-attention and Liger are GPU kernels
        "llama fp32: packed rows on flash-attention varlen = padded rows on sdpa",
        "llama fp32: Liger kernels = plain",
    }
    assert all(c["ok"] for c in results["checks"] if c["name"] not in not_run)
    names = {c["name"] for c in results["checks"]}
    for tool in ("chatbot (piped)", "evaluation", "serving benchmark"):
        assert f"{tool} on the ZeRO 3 save" in names
    measured = [r for r in results["runs"] if r["measured"]]
    assert len(measured) == 8 and all(r["useful_tps"] > 0 for r in measured)
    report = (tmp_path / "RESULTS_GPU.md").read_text()
    assert "## Throughput: upstream padding vs dynamic padding vs packing" in report
    assert "| opt fp32 ZeRO 3 + offload | opt | fp32 | 3 | ok |" in report
    assert results_gpu_mtime() == before  # only a GPU run writes the repository's bench/RESULTS_GPU.md


def results_gpu_mtime() -> int | None:
    path = ROOT / "bench" / "RESULTS_GPU.md"
    return path.stat().st_mtime_ns if path.exists() else None


def test_a_package_that_does_not_import_stops_it_at_once_naming_the_package(tmp_path):
    (tmp_path / "datasets.py").write_text("raise ImportError('pyarrow 21 is too old: datasets needs 24')\n")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(tmp_path))
    proc = subprocess.run(
        ["bash", ROOT / "bench" / "gpu_check.sh", "--cpu", "--out", tmp_path / "out"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-2:] == [
        "gpu_check: cannot import what the runs need:",
        "  datasets: ImportError: pyarrow 21 is too old: datasets needs 24",
    ]
