#!/usr/bin/env python
"""Where a packed training step's CPU time goes: torch's profiler over forward, backward and AdamW.

Ops are grouped (matmuls, attention, elementwise and norms, the loss, the optimizer, the rest) with their share
of the step and the matmuls' own FLOP rate against the machine's measured matmul peak, so the gap between MFU
and the peak is split into "matmuls run below peak" and "time outside matmuls". Prints a table and writes its
section of bench/RESULTS.md.

    python bench/profile_step.py                     # SmolLM2-135M, packed 4 x 512, fp32, 2 threads
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_batching import ROOT, matmul_peak_flops
from bench_memory import packed_batch
from results_file import replace_section

GROUPS = (  # (group, substrings of aten op names), first match wins
    ("matmuls", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (sdpa)", ("scaled_dot_product", "flash_attention", "efficient_attention")),
    ("optimizer (AdamW)", ("_foreach", "adam", "lerp", "addcdiv", "addcmul")),
    ("loss (logsumexp, gather)", ("logsumexp", "gather", "log_softmax", "nll_loss", "cross_entropy")),
    (
        "elementwise, norms, rotary",
        ("mul", "add", "silu", "sigmoid", "rsqrt", "pow", "mean", "neg", "cat", "exp", "sub", "div", "sum"),
    ),
    ("copies, casts, indexing", ("copy_", "to", "clone", "contiguous", "index", "masked", "fill", "zero")),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="Model dir (default: the embedded SmolLM2-135M-Instruct)."
    )
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lm_loss", default="chunked", choices=("chunked", "full"))
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    return parser.parse_args(argv)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(key in name for key in keys):
            return group
    return "other"


def profile(args) -> tuple[dict[str, float], float, float, int]:
    from transformers import AutoModelForCausalLM

    from dschat.utils.model.chunked_loss import use_chunked_loss

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    if args.lm_loss == "chunked":
        use_chunked_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-8)
    batch = packed_batch(model, args.batch_size, args.max_seq_len)

    def step():
        model(**batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: Adam's states, allocator
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        step()
    wall = time.perf_counter() - start
    seconds: dict[str, float] = defaultdict(float)
    matmul_flops = 0
    for event in prof.key_averages():
        seconds[group_of(event.key)] += event.self_cpu_time_total / 1e6
        if group_of(event.key) == "matmuls":
            matmul_flops += event.flops or 0
    params = sum(p.numel() for p in model.parameters())
    return dict(seconds), wall, matmul_flops, params


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from dschat.default_model import default_model_dir

        args.model = str(default_model_dir())
    peak = matmul_peak_flops(args.threads)
    seconds, wall, matmul_flops, params = profile(args)
    tokens = args.batch_size * args.max_seq_len
    profiled = sum(seconds.values())
    lines = [
        "# Step profile: where a packed step's CPU time goes",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/profile_step.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} torch threads, fp32. Model "
        f"`{Path(args.model).name}` ({params / 1e6:.1f}M parameters), packed {args.batch_size} x {args.max_seq_len} "
        f"tokens, `--lm_loss {args.lm_loss}`, sdpa attention, torch AdamW; one profiled step after a warm-up "
        f"(the profiler adds a little time). Matmul peak measured in the same run: {peak / 1e9:.1f} GFLOP/s.",
        "",
        f"Step {wall:.2f} s: MFU {100 * 6 * params * tokens / wall / peak:.1f}% (6 x parameters x tokens / step time / "
        f"peak). Matmuls ran at {matmul_flops / max(seconds.get('matmuls', 1e-9), 1e-9) / 1e9:.1f} GFLOP/s "
        f"({100 * matmul_flops / max(seconds.get('matmuls', 1e-9), 1e-9) / peak:.0f}% of peak).",
        "",
        "| ops | CPU s | share of profiled time |",
        "|---|---|---|",
    ]
    for group, value in sorted(seconds.items(), key=lambda item: -item[1]):
        lines.append(f"| {group} | {value:.2f} | {100 * value / profiled:.1f}% |")
    report = "\n".join(lines) + "\n"
    print(report)
    replace_section(args.output, report)


if __name__ == "__main__":
    main()
