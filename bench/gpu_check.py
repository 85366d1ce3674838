#!/usr/bin/env python
"""dschat's GPU path, run for real in one command, then measured; start it with bench/gpu_check.sh.

    bash bench/gpu_check.sh                  # a GPU machine: installs .gpu-packages, ~8 minutes on one GPU
    bash bench/gpu_check.sh --cpu            # the same steps in fp32 on tiny models (make test runs this)

Trains a few steps per run through main.py, each in its own process, per-step losses kept: fp16 ZeRO 0/2/3,
ZeRO-3 + --offload, LoRA under ZeRO-3, bf16 ZeRO 2/3, --gradient_checkpointing, packed rows on sdpa (and
flash-attention's varlen path, Liger's kernels where they are installed), fp32 on the GPU and on the CPU.
Then checks what must hold (bench/gpu_checks.py), uses a ZeRO-3 save through the chatbot, the evaluation
command and the serving benchmark, and measures tokens/s, MFU and peak memory of upstream padding vs dynamic
padding vs packing. Writes RESULTS_GPU.md, results.json and log.txt into --out; a GPU run also updates
bench/RESULTS_GPU.md. Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gpu_cases
import gpu_checks
from bench_batching import count_params, datasets
from gpu_report import PACKAGES, environment, format_losses, format_report, version
from worker import SCRIPT, read_peaks

ROOT = gpu_cases.ROOT
QUESTIONS = "What is a telescope?\nName three primary colours.\n"
REQUIRED_MODULES = (
    "torch",
    "deepspeed",
    "transformers",
    "datasets",
    "peft",
    "sacrebleu",
    "dschat.utils.train",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="fp32 on tiny models, on this machine's CPU.")
    parser.add_argument("--out", default=str(ROOT / "gpu_check"), help="Folder for the three result files.")
    parser.add_argument(
        "--tokenizer",
        default=os.environ.get("DSCHAT_TOKENIZER", str(ROOT / ".gpu-packages" / "tokenizer")),
        help="The GPU models' tokenizer (make gpu-packages copies SmolLM2's).",
    )
    parser.add_argument("--skip_measurements", action="store_true", help="Functional runs and checks only.")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    profile = gpu_cases.CPU if args.cpu else gpu_cases.GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    preflight()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = Path(tmp)
        env = environment(profile)
        say(
            f"{profile.name} profile on {env['device']}; peak {env['peak_tflops']:.1f} TFLOP/s ({env['peak_dtype']})"
        )
        models = gpu_cases.build_models(profile, work / "models", Path(args.tokenizer))
        results = {"profile": profile.name, "models": models_shape(models), "environment": env}
        results.update(runs=[], tools=[], checks=[], seconds=0.0)
        data = dict(zip(("demo", "long-tail"), datasets(work / "data").values()))
        env["op_builds_s"] = prebuild_ops(profile, work)
        # Each phase's results are written as soon as it ends: a run cut short by a time limit keeps them.
        functional = run_all(
            profile, gpu_cases.functional_runs(profile), models, data, work, profile.concurrency
        )
        results["runs"], results["checks"] = functional, gpu_checks.functional_checks(profile, functional)
        write_outputs(out, results, started)
        if not args.skip_measurements:
            measured = run_all(profile, gpu_cases.measurement_runs(profile), models, data, work, 1)
            results["runs"] = functional + measured
            results["checks"] += [gpu_checks.finite(run) for run in measured]
            write_outputs(out, results, started)
        results["tools"] = run_tools(profile, functional, data["demo"], work)
        results["checks"] += [gpu_checks.tool_check(tool) for tool in results["tools"]]
        report = write_outputs(out, results, started)
    if profile.name == "gpu":
        (ROOT / "bench" / "RESULTS_GPU.md").write_text(report)
    print(report)
    checks = results["checks"]
    failed = [c["name"] for c in checks if c["ok"] is False]
    held, not_run = sum(c["ok"] is True for c in checks), sum(c["ok"] is None for c in checks)
    say(
        f"{held} of {len(checks)} checks hold, {not_run} not run here ({results['seconds']:.0f} s); failed: {failed or 'none'}"
    )
    return 1 if failed else 0


def preflight() -> None:
    """Import what the runs need first: a missing or broken package is one line in seconds, not a failed run."""
    problems = []
    for name in REQUIRED_MODULES:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure is reported, with its cause
            problems.append(
                f"{name}: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            )
    if problems:
        raise SystemExit("gpu_check: cannot import what the runs need:\n  " + "\n  ".join(problems))
    say("imports: " + ", ".join(f"{name} {version(name) or '-'}" for name in PACKAGES))


def write_outputs(out: Path, results: dict, started: float) -> str:
    """RESULTS_GPU.md, results.json and log.txt as they stand; returns the report."""
    results["seconds"] = round(time.time() - started, 1)
    report = format_report(results)
    (out / "RESULTS_GPU.md").write_text(report)
    (out / "results.json").write_text(json.dumps(strip_logs(results), indent=1))
    write_logs(out / "log.txt", results["runs"], results["tools"])
    return report


def say(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def prebuild_ops(profile, work: Path) -> dict:
    """JIT-build DeepSpeed's FusedAdam and CPU Adam once, side by side, before runs that need them start."""
    if profile.name != "gpu":
        return {}
    builders = ("FusedAdamBuilder", "CPUAdamBuilder")
    started = time.time()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"from deepspeed.ops.op_builder import {name}; {name}().load()"],
            stdout=open(work / f"{name}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for name in builders
    }
    seconds = {}
    for name, proc in procs.items():
        proc.wait()
        seconds[name] = round(time.time() - started, 1) if proc.returncode == 0 else None
        say(f"{name}: {'built' if proc.returncode == 0 else 'FAILED'} in {time.time() - started:.0f} s")
    return seconds


def run_all(profile, runs, models, data, work: Path, concurrency: int) -> list[dict]:
    def one(index_run):
        index, run = index_run
        return run_one(
            profile, run, models[run.model], data[run.data], work / f"run{index:02d}", work / "cache"
        )

    offset = len(list(work.glob("run*")))
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, enumerate(runs, start=offset)))


def run_one(profile, run, model: Path, data: Path, out: Path, cache: Path) -> dict:
    result = {"name": run.name, "model": run.model, "dtype": run.dtype, "zero": run.zero, "flags": run.flags}
    result.update(measured=run.measured, shape=run.shape, out=str(out), model_dir=str(model))
    if run.needs and importlib.util.find_spec(run.needs) is None:
        say(f"skip  {run.name}: {run.needs} is not installed")
        return {**result, "status": "skipped", "reason": f"{run.needs} is not installed"}
    argv = gpu_cases.main_argv(profile, run, model, data, cache, out)
    started = time.time()
    try:
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), *argv],
            env=gpu_cases.run_env(profile, run.env),
            capture_output=True,
            text=True,
            timeout=profile.timeout_s,
        )
        code, log = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, log = (
            "timeout",
            f"{err.stdout or ''}{err.stderr or ''}\n[gpu_check] killed after {profile.timeout_s} s",
        )
    result.update(seconds=round(time.time() - started, 1), log=log)
    if code != 0:
        say(f"FAIL  {run.name} ({code}); see log.txt")
        return {**result, "status": "failed", "reason": last_error(log)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result.update(status="ok", losses=[row["loss"] for row in rows], peaks=read_peaks(proc.stdout))
    if run.measured:
        result.update(throughput(rows[profile.warmup_steps :]))
    say(f"ok    {run.name}: {result['seconds']:.0f} s, losses {format_losses(result['losses'])}")
    return result


def throughput(rows: list[dict]) -> dict:
    seconds = sum(row["time"] for row in rows)
    return {
        "step_s": seconds / len(rows),
        "useful_tps": sum(row["loss_tokens"] for row in rows) / seconds,
        "real_tps": sum(row["tokens"] for row in rows) / seconds,
        "padded_tps": sum(row["padded_tokens"] for row in rows) / seconds,
    }


def run_tools(profile, functional: list[dict], demo: Path, work: Path) -> list[dict]:
    """The ZeRO-3 save through the chatbot (piped), the evaluation command and the serving benchmark."""
    name = gpu_cases.label("llama", profile.bf16, 3)
    saved = next(r for r in functional if r["name"] == name)
    if saved["status"] != "ok":
        return [{"name": "chatbot, evaluation, serving", "status": "failed", "reason": f"{name} failed"}]
    model = saved["out"]
    report = work / "evaluation.json"
    tools = [
        ("chatbot (piped)", [ROOT / "inference" / "chatbot.py", "--path", model, "--max_new_tokens", "16"]),
        (
            "evaluation",
            [
                "-m", "dschat.inference.evaluate", "--model", model, "--data_path", demo, "--max_samples", "8",
                "--max_new_tokens", "16", "--data_output_path", work / "eval-cache", "--output", report,
            ],
        ),
    ]  # fmt: skip
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("uvicorn"):
        serve = [ROOT / "bench" / "bench_serve.py", "--model", model, "--levels", "1", "4", "--requests", "2"]
        tools.append(("serving benchmark", [*serve, "--max_tokens", "16", "--threads", str(profile.threads)]))
    results = []
    for name, argv in tools:
        started = time.time()
        proc = subprocess.run(
            [sys.executable, *map(str, argv)],
            input=QUESTIONS,
            env=gpu_cases.run_env(profile),
            capture_output=True,
            text=True,
            timeout=profile.timeout_s,
        )
        result = {"name": name, "seconds": round(time.time() - started, 1), "log": proc.stdout + proc.stderr}
        result.update(status="ok" if proc.returncode == 0 else "failed", stdout=proc.stdout)
        if name == "evaluation" and proc.returncode == 0:
            result["report"] = json.loads(report.read_text())
        if proc.returncode != 0:
            result["reason"] = last_error(result["log"])
        say(f"{result['status']:5s} {name}: {result['seconds']:.0f} s")
        results.append(result)
    return results


def last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("PEAKS ")]
    return lines[-1][:300] if lines else "no output"


def models_shape(models: dict[str, Path]) -> dict[str, dict]:
    """Model key -> its architecture and parameter count, from each saved config (no weights loaded)."""
    from transformers import AutoConfig

    return {
        key: {
            "arch": AutoConfig.from_pretrained(path).model_type,
            "params": count_params(str(path)),
            "dir": path.name,
        }
        for key, path in models.items()
    }


def write_logs(path: Path, runs: list[dict], tools: list[dict]) -> None:
    with path.open("w") as log:
        for entry in [*runs, *tools]:
            log.write(
                f"\n===== {entry['name']} ({entry['status']}) =====\n{entry.get('log', entry.get('reason', ''))}\n"
            )


def strip_logs(results: dict) -> dict:
    drop = {"log", "stdout", "out", "model_dir"}
    return {
        **results,
        "runs": [{k: v for k, v in r.items() if k not in drop} for r in results["runs"]],
        "tools": [{k: v for k, v in t.items() if k not in drop} for t in results["tools"]],
    }


if __name__ == "__main__":
    sys.exit(main())
