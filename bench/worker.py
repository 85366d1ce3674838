"""A benchmark's child process: run main.py in this process, then report its peak memory on the last line.

Each measured run is a fresh process so its peak memory is its own; the parent reads the line back with
``read_peaks``.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "training" / "step1_supervised_finetuning" / "main.py"
PEAKS_PREFIX = "PEAKS "
SCRIPT = Path(__file__).resolve()  # run as: python SCRIPT <main.py's flags>


def run_main(main_argv: list[str]) -> None:
    """main.py with ``main_argv`` through its own error handling, then the peaks line; exits with its code."""
    from dschat.errors import run_cli

    spec = importlib.util.spec_from_file_location("step1_main", MAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = run_cli(module.main, main_argv)
    report_peaks()
    sys.exit(code)


def report_peaks(rss_kb: int | None = None) -> None:
    """Print this process's peak RSS (or ``rss_kb``, read earlier) and peak accelerator memory."""
    peaks = {"rss_kb": peak_rss_kb() if rss_kb is None else rss_kb, "gpu_bytes": peak_gpu_bytes()}
    print(PEAKS_PREFIX + json.dumps(peaks), flush=True)


def read_peaks(stdout: str) -> dict:
    """The peaks a worker printed: {"rss_kb": int, "gpu_bytes": int}."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(PEAKS_PREFIX):
            return json.loads(line[len(PEAKS_PREFIX) :])
    raise ValueError("the worker printed no peaks line (it died before main.py returned)")


def peak_rss_kb() -> int:
    """This process's peak RSS. VmHWM where Linux has it: ru_maxrss survives exec, so a worker started by a big
    parent would report at least the parent's RSS at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_gpu_bytes() -> int:
    """Peak memory torch allocated on this process's GPU (0 without one)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return 0
    return int(torch.cuda.max_memory_allocated())


if __name__ == "__main__":  # python bench/worker.py <main.py's flags>
    run_main(sys.argv[1:])
