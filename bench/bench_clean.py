#!/usr/bin/env python
"""Benchmark dschat.clean on synthetic records (~500 characters): records/s per rule and peak RSS per size.

Each size runs in a fresh process (so its peak RSS is its own) through the same streaming pipeline as
``python -m dschat.clean`` (chunked per-record stage in ``--num_proc`` workers, survivors spooled to disk, output
written as JSON lines). Records come from a generator, not a file: this measures the cleaning, not the loaders.
Defects are injected at fixed rates (exact and near duplicates, mojibake, empty answers, eval prompts in train).
Prints a markdown section for bench/RESULTS.md.

    python bench/bench_clean.py                        # 10k and 100k records, 2 workers
    python bench/bench_clean.py --sizes 10000 100000 1000000 --num_proc 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EVAL_FRACTION = 0.01
RATES = {"exact": 0.04, "near": 0.04, "mojibake": 0.01, "empty": 0.01, "contaminated": 0.005}


def vocabulary(rng: random.Random, size: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Random words and Zipf-like cumulative weights (a few common words, a long tail)."""
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(size)
    ]
    return np.array(words, dtype=object), np.cumsum(1.0 / np.arange(1, size + 1))


def sentences(generator: np.random.Generator, words, weights, count: int, length: int) -> list[str]:
    """``count`` random sentences of ``length`` Zipf-drawn words (one vectorised draw)."""
    picks = np.searchsorted(weights, generator.random((count, length)) * weights[-1])
    return [" ".join(row) for row in words[picks]]


def records(count: int, seed: int, eval_prompts: list[str] | None = None):
    """(where, conversation, None) items: ~100-character prompt, ~400-character answer, defects injected."""
    rng, generator = random.Random(seed), np.random.default_rng(seed)
    words, weights = vocabulary(random.Random(0))
    recent: list[list[dict]] = []
    prompts, answers = [], []
    for i in range(count):
        if not prompts:
            prompts = sentences(generator, words, weights, 1000, 15)
            answers = sentences(generator, words, weights, 1000, 60)
        prompt, answer = prompts.pop() + "?", answers.pop() + "."
        roll = rng.random()
        if recent and roll < RATES["exact"]:
            base = rng.choice(recent)
            messages = [{"role": m["role"], "content": "  " + m["content"].upper()} for m in base]
        elif recent and roll < RATES["exact"] + RATES["near"]:
            base = rng.choice(recent)
            changed = base[1]["content"].split()
            changed[len(changed) // 2] = "changed"
            messages = [base[0], {"role": "assistant", "content": " ".join(changed)}]
        else:
            if eval_prompts and rng.random() < RATES["contaminated"] / (1 - RATES["exact"] - RATES["near"]):
                prompt = rng.choice(eval_prompts)
            if rng.random() < RATES["mojibake"]:
                answer = answer.replace("a", "Ã©", 1)
            if rng.random() < RATES["empty"]:
                answer = " "
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            if not answer.strip():
                pass  # never the base of a duplicate
            elif len(recent) < 1000:
                recent.append(messages)
            else:
                recent[rng.randrange(1000)] = messages
        yield f"record {i + 1}", messages, None


def run_one(size: int, num_proc: int, model: str | None = None, extra_rules: bool = False) -> dict:
    """Clean ``size`` train records (+1% eval) in this process; per-rule timings, wall time, peak RSS."""
    from dschat.clean.config import CleanConfig
    from dschat.clean.output import AtomicJsonl
    from dschat.clean.pipeline import FileSpool, clean_train_and_eval

    eval_size = max(int(size * EVAL_FRACTION), 10)
    eval_items = list(records(eval_size, seed=2))
    eval_prompts = [messages[0]["content"] for _, messages, _ in eval_items[:200]]
    config = CleanConfig(num_proc=num_proc, scrub_pii=extra_rules, languages=("en",) if extra_rules else ())
    tokenizer = None
    if model:
        from dschat.utils.model.model_utils import load_hf_tokenizer

        tokenizer = load_hf_tokenizer(model)
    with tempfile.TemporaryDirectory() as tmp:
        out = {split: AtomicJsonl(Path(tmp) / f"{split}.jsonl") for split in ("train", "eval")}
        start = time.perf_counter()
        report, _, _ = clean_train_and_eval(
            (records(size, seed=1, eval_prompts=eval_prompts), size),
            (iter(eval_items), eval_size),
            config,
            tokenizer,
            lambda split: FileSpool(os.path.join(tmp, f"spool-{split}.jsonl")),
            lambda index, where, messages: out["train"].write(messages),
            lambda index, where, messages: out["eval"].write(messages),
        )
        for writer in out.values():
            writer.commit()
        wall = time.perf_counter() - start
    rules = {
        name: {"removed": report.removed(name), "checked": stats.checked, "seconds": round(stats.seconds, 3)}
        for name, stats in report.rules.items()
        if stats.seconds
    }
    return {
        "size": size,
        "eval_size": eval_size,
        "wall_s": round(wall, 2),
        "records_per_s": round((size + eval_size) / wall),
        "kept": report.kept,
        "rules": rules,
        "cpu_s": round(_cpu_seconds(), 1),
        "peak_rss_main_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_rss_worker_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
    }


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its (finished) workers."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in ("ftfy", "datasketch", "numpy", "xxhash"))
    lines = [
        "# Cleaning benchmark: `python -m dschat.clean` stages on synthetic records",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/bench_clean.py --sizes "
        f"{' '.join(str(r['size']) for r in results)} --num_proc {args.num_proc}"
        + (" --model_name_or_path " + Path(args.model_name_or_path).name if args.model_name_or_path else "")
        + (" --extra_rules" if args.extra_rules else "")
        + f"` on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, {versions}; {args.num_proc} worker processes, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        "Records: ~500 characters (15-word prompt, 60-word answer, Zipf-distributed 20k-word vocabulary) with "
        f"defects injected ({', '.join(f'{k} {v:.1%}' for k, v in RATES.items())}); eval = 1% extra records. "
        "Default rules"
        + (
            f", token-length rules with the `{Path(args.model_name_or_path).name}` tokenizer"
            if args.model_name_or_path
            else " (no tokenizer: the token-length rules are off)"
        )
        + (
            "; PII scrub and `--languages en` on."
            if args.extra_rules
            else "; PII scrub and language filter off."
        ),
        "",
        "| records | wall s | records/s | CPU s (all processes) | records per CPU-s | peak RSS main GB | peak RSS worker GB | kept train |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per_cpu = (r["size"] + r["eval_size"]) / r["cpu_s"]
        lines.append(
            f"| {r['size']:,} | {r['wall_s']} | {r['records_per_s']:,} | {r['cpu_s']} | {per_cpu:,.0f} | {r['peak_rss_main_gb']} | {r['peak_rss_worker_gb']} | {r['kept']['train']:,} |"
        )
    lines += [
        "",
        "Per rule, records per second of time inside the rule, summed over workers (wall clock: lower when the "
        "cores are shared). `near_dup` includes the tokenisation it shares with `contaminated`; `exact_dup` is the "
        "main process's bookkeeping per record (digest set, spooling survivors).",
        "",
    ]
    names = list(results[-1]["rules"])
    lines.append("| rule | " + " | ".join(f"{r['size']:,}" for r in results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for name in names:
        cells = []
        for r in results:
            rule = r["rules"].get(name, {})
            checked, seconds = rule.get("checked", 0), rule.get("seconds", 0)
            cells.append(f"{checked / seconds:,.0f}" if checked and seconds else f"{seconds} s")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument(
        "--model_name_or_path", default=None, help="A tokenizer: also run the token-length rules."
    )
    parser.add_argument(
        "--extra_rules", action="store_true", help="Also run the PII scrub and --languages en."
    )
    parser.add_argument(
        "--one", type=int, default=None, help=argparse.SUPPRESS
    )  # internal: one size, JSON out
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.num_proc, args.model_name_or_path, args.extra_rules)))
        return
    results = []
    for size in args.sizes:
        command = [sys.executable, __file__, "--one", str(size), "--num_proc", str(args.num_proc)]
        command += ["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else []
        command += ["--extra_rules"] if args.extra_rules else []
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(
            f"{size:>9,} records: {results[-1]['wall_s']} s, {results[-1]['records_per_s']:,} records/s, "
            f"peak RSS {results[-1]['peak_rss_main_gb']} GB (+ workers {results[-1]['peak_rss_worker_gb']} GB each)",
            file=sys.stderr,
            flush=True,
        )
    print(markdown(results, args))


if __name__ == "__main__":
    main()
