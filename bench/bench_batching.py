#!/usr/bin/env python
"""Benchmark upstream-style padding against dschat's faster batching, with the same model, data and seed.

For each dataset (the shipped demo data, and a long-tailed synthetic mix) and each batching mode
(upstream: pad to --max_seq_len; dynamic padding; length grouping; packing) it runs main.py for a few
optimizer steps in a fresh process and reports useful (loss-bearing) tokens/s, padded tokens/s, step time,
peak RSS, final loss and MFU against this machine's matmul peak, measured in the same run.
Prints a table and writes bench/RESULTS.md.

    python bench/bench_batching.py                  # CPU defaults: SmolLM2-135M, 512 tokens, 4 steps
    python bench/bench_batching.py --model DIR --steps 20 --threads 16   # a GPU box or a bigger model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from results_file import replace_section
from worker import ROOT, SCRIPT, read_peaks

MODES = {
    "upstream (pad to max)": ["--pad_to_max_len"],
    "dynamic padding": ["--padding", "longest"],
    "length grouping": ["--padding", "longest", "--group_by_length"],
    "packing": ["--packing"],
}
WORDS = (
    "the a model learns from data every step while tokens flow through layers of attention and mlp".split()
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="Model dir (default: the embedded SmolLM2-135M-Instruct)."
    )
    parser.add_argument(
        "--steps", type=int, default=4, help="Measured optimizer steps per run (one more warms up)."
    )
    parser.add_argument("--batch_size", type=int, default=4, help="Micro-batch per device.")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads per run (recorded in the results)."
    )
    parser.add_argument("--dtype", default="fp32", help="fp32 on CPU; bf16 on a GPU.")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    return parser.parse_known_args(argv)


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """A long-tailed length mix: most answers short, a few near or past max_seq_len (like real chat data)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answer_words = min(int(rng.lognormvariate(3.2, 1.0)), 700)
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30)))
        rows.append(
            {
                "prompt": f"Question {i}: {question}?",
                "response": " ".join(rng.choice(WORDS) for _ in range(answer_words)) + ".",
            }
        )
    return rows


def write_dataset(directory: Path, train: list[dict], eval_rows: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", eval_rows)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def datasets(workdir: Path) -> dict[str, Path]:
    demo_train = [
        json.loads(line) for line in (ROOT / "data" / "demo" / "train.jsonl").read_text().splitlines()
    ]
    demo_eval = [
        json.loads(line) for line in (ROOT / "data" / "demo" / "eval.jsonl").read_text().splitlines()
    ]
    return {
        "demo (shipped)": write_dataset(workdir / "demo", demo_train, demo_eval[:4]),
        "synthetic long-tail": write_dataset(
            workdir / "synthetic", synthetic_rows(400), synthetic_rows(4, seed=1)
        ),
    }


def matmul_peak_flops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 matmul FLOP/s on this machine with ``threads`` threads (the MFU denominator)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def run_mode(args, model: str, data: Path, flags: list[str], out: Path) -> dict:
    argv = [
        "--model_name_or_path",
        model,
        "--data_path",
        str(data),
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(out.parent / "cache"),
        "--dtype",
        args.dtype,
        "--zero_stage",
        "0",
        "--max_seq_len",
        str(args.max_seq_len),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--per_device_eval_batch_size",
        str(args.batch_size),
        "--learning_rate",
        "1e-5",
        "--dropout",
        "0.0",
        "--max_steps",
        str(args.steps + 1),
        "--log_interval",
        "1000",
        "--output_dir",
        str(out),
        "--save_format",
        "safetensors",
        "--deepspeed",
        *flags,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run failed ({flags}):\n{proc.stderr[-3000:]}")
    peak_kb = read_peaks(proc.stdout)["rss_kb"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # drop warm-up
    seconds = sum(r["time"] for r in rows)
    return {
        "steps": len(rows),
        "useful_tps": sum(r["loss_tokens"] for r in rows) / seconds,
        "real_tps": sum(r["tokens"] for r in rows) / seconds,
        "padded_tps": sum(r["padded_tokens"] for r in rows) / seconds,
        "step_s": seconds / len(rows),
        "peak_rss_gb": peak_kb / 1024**2,
        "final_loss": rows[-1]["loss"],
        "samples": sum(1 for _ in rows),
    }


def count_params(model: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return sum(
            p.numel()
            for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters()
        )


def main() -> None:
    args, _ = parse_args()
    if args.model is None:
        from dschat.default_model import default_model_dir

        args.model = str(default_model_dir())
    peak = matmul_peak_flops(args.threads)
    params = count_params(args.model)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for data_name, data in datasets(Path(tmp)).items():
            for mode, flags in MODES.items():
                result = run_mode(args, args.model, data, flags, Path(tmp) / f"{data.name}-{len(results)}")
                result.update(dataset=data_name, mode=mode, mfu=6 * params * result["real_tps"] / peak)
                results.append(result)
                print(
                    f"{data_name:20s} {mode:22s} useful_tok/s={result['useful_tps']:8.1f} "
                    f"step={result['step_s']:6.2f}s loss={result['final_loss']:.4f}",
                    flush=True,
                )
    report = format_report(args, results, peak, params)
    print(report)
    replace_section(args.output, report)  # the other benchmarks' sections stay
    Path(args.output).with_suffix(".json").write_text(json.dumps(results, indent=1))


def format_report(args, results: list[dict], peak: float, params: int) -> str:
    lines = [
        "# Batching benchmark: upstream padding vs dschat's faster batching",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/bench_batching.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} torch threads, dtype {args.dtype}.",
        f"Model `{Path(args.model).name}` ({params / 1e6:.1f}M parameters), micro-batch {args.batch_size}, "
        f"max_seq_len {args.max_seq_len}, {args.steps} measured steps per run after one warm-up step, seed 1234, "
        f"dropout 0. Matmul peak measured in the same run: {peak / 1e9:.1f} GFLOP/s (fp32).",
        "",
        "Useful tokens carry loss; padded tokens are what the model computes (batch x width).",
        "MFU = 6 x parameters x real tokens/s / matmul peak.",
        "",
        "| data | mode | useful tok/s | x upstream | padded tok/s | step s | peak RSS GB | final loss | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        base = next(b for b in results if b["dataset"] == r["dataset"] and b["mode"].startswith("upstream"))
        lines.append(
            f"| {r['dataset']} | {r['mode']} | {r['useful_tps']:.1f} | {r['useful_tps'] / base['useful_tps']:.2f}x | "
            f"{r['padded_tps']:.1f} | {r['step_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['final_loss']:.4f} | "
            f"{100 * r['mfu']:.1f}% |"
        )
    lines += [
        "",
        "Final losses differ between modes only where the batches differ (length grouping and packing "
        "reorder or combine samples); upstream and dynamic padding see the same batches.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
