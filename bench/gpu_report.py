"""bench/gpu_check.py's machine description (with the matmul peak measured in the same run) and its report."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "peft", "liger-kernel", "flash-attn", "triton")


def environment(profile) -> dict:
    import torch

    on_gpu = profile.name == "gpu" and torch.cuda.is_available()
    if profile.name == "gpu" and not on_gpu:
        raise SystemExit("gpu_check: torch sees no GPU here; use --cpu on a machine without one")
    peak, dtype = (bf16_peak(), "bf16 matmul") if on_gpu else (fp32_peak(profile.threads), "fp32 matmul")
    return {
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or platform.machine(),
        "cuda": torch.version.cuda if on_gpu else None,
        "cpus": os.cpu_count(),
        "threads": profile.threads,
        "peak_tflops": peak / 1e12,
        "peak_dtype": dtype,
        "versions": {name: version(name) for name in PACKAGES},
        "date": time.strftime("%Y-%m-%d"),
    }


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def bf16_peak(size: int = 8192, repeats: int = 10) -> float:
    """Mean bf16 FLOP/s of ``repeats`` size^3 products after three warm-ups (the MFU denominator)."""
    import torch

    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3)


def fp32_peak(threads: int) -> float:
    from bench_batching import matmul_peak_flops

    return matmul_peak_flops(threads)


def format_report(results: dict) -> str:
    env, profile = results["environment"], results["profile"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    checks = results["checks"]
    held = sum(c["ok"] is True for c in checks)
    lines = [
        "# GPU check: dschat's GPU path run for real" if profile == "gpu" else "# GPU check, --cpu mode",
        "",
        f"Measured {env['date']} by `bash bench/gpu_check.sh{'' if profile == 'gpu' else ' --cpu'}` on {env['device']}"
        + (f" (CUDA {env['cuda']})" if env["cuda"] else "")
        + f", {env['cpus']} CPU cores, {env['threads']} torch threads per run; {versions}.",
        f"Whole script: {results['seconds']:.0f} s. Matmul peak measured in the same run: "
        f"{env['peak_tflops']:.1f} TFLOP/s ({env['peak_dtype']}).",
        "",
        "Models (random-initialised from their configs): "
        + "; ".join(f"`{k}` {m['arch']} {m['params'] / 1e6:.1f}M" for k, m in results["models"].items())
        + ".",
        "",
        f"## Checks: {held} of {len(checks)} hold, {sum(c['ok'] is False for c in checks)} fail, "
        f"{sum(c['ok'] is None for c in checks)} not run here",
        "",
        "| check | result | detail |",
        "|---|---|---|",
        *(f"| {c['name']} | {mark(c['ok'])} | {c['detail']} |" for c in checks),
        "",
        "## Runs (per-step losses from metrics.jsonl)",
        "",
        "| run | model | dtype | ZeRO | status | seconds | peak GPU GB | peak RSS GB | losses |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if r["measured"]:
            continue
        lines.append(
            f"| {r['name']} | {r['model']} | {r['dtype']} | {r['zero']} | {r['status']} | {r.get('seconds', '')} | "
            f"{gb(r, 'gpu_bytes')} | {gb(r, 'rss_kb')} | {losses(r)} |"
        )
    lines += [""] + measurement_table(results)
    lines += ["## Tools on the ZeRO 3 save", "", "| tool | status | seconds |", "|---|---|---|"]
    lines += [f"| {t['name']} | {t['status']} | {t.get('seconds', '')} |" for t in results["tools"]]
    serving = next(
        (t for t in results["tools"] if t["name"] == "serving benchmark" and t["status"] == "ok"), None
    )
    if serving:
        lines += ["", "Serving benchmark's own table:", ""]
        lines += [line for line in serving["stdout"].splitlines() if line.startswith("|")]
    return "\n".join(lines) + "\n"


def measurement_table(results: dict) -> list[str]:
    measured = [r for r in results["runs"] if r["measured"]]
    if not measured:
        return []
    params = results["models"]["llama"]["params"]
    peak = results["environment"]["peak_tflops"] * 1e12
    lines = [
        "## Throughput: upstream padding vs dynamic padding vs packing",
        "",
        f"`llama` model, {measured[0]['dtype']}, ZeRO {measured[0]['zero']}, long-tailed synthetic data; per-step "
        "times after the warm-up steps. Useful tokens carry loss; padded tokens are what the model computes. "
        "MFU = 6 x parameters x real tokens/s / the matmul peak above.",
        "",
        "| mode | max_seq_len x micro-batch | useful tok/s | x upstream | padded tok/s | step s | MFU | peak GPU GB | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in measured:
        seq_len, batch = r["shape"]
        if r["status"] != "ok":
            lines.append(
                f"| {r['name']} | {seq_len} x {batch} | | | | | | | {r['status']}: {r.get('reason', '')} |"
            )
            continue
        base = next((b for b in measured if b["shape"] == r["shape"] and b["name"].startswith("upstream")), r)
        ratio = r["useful_tps"] / base["useful_tps"] if base.get("useful_tps") else float("nan")
        lines.append(
            f"| {r['name'].split(' @ ')[0]} | {seq_len} x {batch} | {r['useful_tps']:.0f} | {ratio:.2f}x | "
            f"{r['padded_tps']:.0f} | {r['step_s']:.3f} | {100 * 6 * params * r['real_tps'] / peak:.1f}% | "
            f"{gb(r, 'gpu_bytes')} | ok |"
        )
    return lines + [""]


def mark(ok: bool | None) -> str:
    return {True: "holds", False: "**FAILS**", None: "not run"}[ok]


def gb(run: dict, key: str) -> str:
    value = run.get("peaks", {}).get(key)
    if not value:
        return ""
    return f"{value / (1024**3 if key == 'gpu_bytes' else 1024**2):.2f}"


def losses(run: dict) -> str:
    return format_losses(run["losses"]) if run["status"] == "ok" else run.get("reason", "")[:120]


def format_losses(values: list[float]) -> str:
    """Per-step losses, the first four and last three of a longer run."""
    shown = [f"{x:.4f}" for x in values]
    return " ".join(shown if len(shown) <= 8 else [*shown[:4], "...", *shown[-3:]])
