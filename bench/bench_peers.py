#!/usr/bin/env python
"""Side by side: dschat's step 1 against Hugging Face TRL's SFTTrainer and upstream's pad-to-max batches.

Every run is a fresh process on the same model, data (bench_batching's demo and synthetic long-tail sets), seed,
micro-batch, max length, optimizer (AdamW, lr 1e-5, betas 0.9/0.95, eps 1e-8, no weight decay, clip 1.0, cosine
over the epoch), fp32 and dropout 0; it trains a warm-up step plus --steps measured optimizer steps. Runs are
interleaved (one of each configuration per round, --repeats rounds) and each configuration reports its median.
The comparison is on useful tokens/s: loss-bearing tokens per second of optimizer step. TRL gets dschat's own
training text (upstream's " Human: ... Assistant: ..." format plus EOS) in dschat's sampler order, with loss on
every token as dschat's default; after training, each TRL run checks its tokens against dschat's.

    python bench/bench_peers.py                       # CPU defaults: SmolLM2-135M, 512 tokens, 4 steps, 2 threads
    python bench/bench_peers.py --repeats 3 --datasets demo
    python bench/bench_peers.py --steps 1 --max_seq_len 128 --threads 1 --output /tmp/peers.md   # smoke test

TRL is optional: pip install -e '.[bench]'. Without it, only dschat and upstream padding run.
Writes its section of --output (bench/RESULTS.md) and <output stem>_peers.json beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_batching import count_params, datasets, matmul_peak_flops, run_mode
from peers_trl import TRL_CONFIGS, position_packing_errors, run_trl
from results_file import replace_section
from worker import ROOT

HEADING = "# Peer benchmark: dschat vs TRL SFTTrainer vs upstream padding"
DSCHAT_CONFIGS = {
    "upstream (pad to max)": ["--pad_to_max_len"],
    "dschat defaults": [],
    "dschat packing": ["--packing"],
}
# These mark sample boundaries only by restarting position_ids in one flattened row (no attention mask).
POSITION_PACKED = ("TRL padding_free", "TRL packing (bfd)")
# --datasets choices -> bench_batching.datasets' names
DATASET_KEYS = {"demo": "demo (shipped)", "synthetic": "synthetic long-tail"}
LOGIT_TOLERANCE = 1e-3  # fp32: a sample alone vs packed differs by ~1e-5; attending across samples, by ~10
TRL_MISSING = (
    "TRL is not installed: pip install -e '.[bench]' to compare against it; running dschat and upstream only"
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", default=None, help="Model dir (default: the embedded SmolLM2-135M-Instruct).")
    add("--steps", type=int, default=4, help="Measured optimizer steps per run (one more warms up).")
    add("--batch_size", type=int, default=4, help="Micro-batch per device.")
    add("--max_seq_len", type=int, default=512, help="Maximum sequence length in tokens (TRL's max_length).")
    add(
        "--threads",
        type=int,
        default=2,
        help="torch threads per run: OMP_NUM_THREADS for every worker (torch sizes its pool from it); TRL workers "
        "also call torch.set_num_threads.",
    )
    add("--repeats", type=int, default=1, help="Interleaved rounds; each configuration reports its median.")
    add(
        "--datasets",
        nargs="+",
        choices=sorted(DATASET_KEYS),
        default=sorted(DATASET_KEYS),
        help="Data sets to run.",
    )
    add(
        "--output",
        default=str(ROOT / "bench" / "RESULTS.md"),
        help="Markdown file whose section this writes.",
    )
    args = parser.parse_args(argv)
    args.dtype = "fp32"  # run_mode's main.py precision; TRL trains in fp32 too (bf16/fp16 off)
    return args


def trl_version() -> str | None:
    """The installed TRL's version, or None (and one line saying how to get it) when it does not import."""
    try:
        import trl
    except ImportError:
        print(TRL_MISSING, flush=True)
        return None
    return trl.__version__


def attention_correct(config: str, result: dict, packing_errors: dict[str, float]) -> str:
    """Whether samples in one row stay apart: by construction, or as checked for position_ids-only packing."""
    if config == "dschat packing":
        return "yes (block mask)"
    if config not in POSITION_PACKED:
        return "yes"
    kernel = result.get("attn_implementation", "sdpa")
    error = packing_errors.get(kernel)
    if error is None:
        return f"unchecked ({kernel})"
    verdict = "yes" if error < LOGIT_TOLERANCE else "no"
    return f"{verdict} ({kernel}: checked)"


# --- Runs, medians, report ----------------------------------------------------------------------------------------


def summarize(metrics_file: Path) -> dict:
    """Throughput of the measured steps (the first one warms up: allocator, optimizer state), per-step losses."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    measured = rows[1:]
    seconds = sum(row["time"] for row in measured)
    return {
        "steps": len(measured),
        "useful_tps": sum(row["loss_tokens"] for row in measured) / seconds,
        "real_tps": sum(row["tokens"] for row in measured) / seconds,
        "step_s": seconds / len(measured),
        "loss_tokens_per_step": sum(row["loss_tokens"] for row in measured) / len(measured),
        "losses": [round(row["loss"], 4) for row in rows],
    }


def run_config(args, config: str, data: Path, out: Path) -> dict:
    """One run of one configuration (dschat's main.py through bench_batching.run_mode, or TRL)."""
    if config in DSCHAT_CONFIGS:
        extra = {"peak_rss_gb": run_mode(args, args.model, data, DSCHAT_CONFIGS[config], out)["peak_rss_gb"]}
    else:
        extra = run_trl(args, config, data, out)
    return {**summarize(out / "metrics.jsonl"), **extra}


def run_rounds(args, data: dict[str, Path], configs: list[str], workdir: Path) -> dict[tuple[str, str], list]:
    """Every (data, configuration) once per round, round after round, so slow drift hits all of them alike."""
    runs: dict[tuple[str, str], list] = {(name, config): [] for name in data for config in configs}
    for round_index in range(args.repeats):
        for (name, config), results in runs.items():
            out = workdir / f"run{round_index}-{data[name].name}-{configs.index(config)}"
            try:
                results.append(run_config(args, config, data[name], out))
            except RuntimeError as err:
                if config in DSCHAT_CONFIGS:
                    raise  # dschat failing is a bug; a TRL configuration this TRL cannot run is a result
                results.append({"failed": str(err).strip().splitlines()[-1][:200]})
            done = results[-1]
            note = done.get("failed") or f"useful_tok/s={done['useful_tps']:.1f} step={done['step_s']:.2f}s"
            print(f"round {round_index + 1}/{args.repeats} {name:20s} {config:22s} {note}", flush=True)
    return runs


def median_result(results: list[dict]) -> dict:
    """The median of each number over the rounds; other fields from the first round."""
    ok = [result for result in results if "failed" not in result]
    if not ok:
        return results[0]
    numbers = {key for key, value in ok[0].items() if isinstance(value, (int, float))}
    return {
        **ok[0],
        **{key: statistics.median(result[key] for result in ok) for key in numbers},
        "runs": len(ok),
    }


def collect(runs, packing_errors: dict[str, float], params: int, peak: float) -> list[dict]:
    """One row per (data, configuration): medians, attention correctness, ratios to upstream and best TRL."""
    rows = []
    for (name, config), results in runs.items():
        row = {"dataset": name, "config": config, **median_result(results)}
        row["attention_correct"] = attention_correct(config, row, packing_errors)
        if "failed" not in row:
            row["mfu"] = 6 * params * row["real_tps"] / peak
        rows.append(row)
    for row in rows:
        same = [r for r in rows if r["dataset"] == row["dataset"] and "failed" not in r]
        upstream = next((r for r in same if r["config"] == "upstream (pad to max)"), None)
        trl = [r for r in same if r["config"] in TRL_CONFIGS and r["attention_correct"].startswith("yes")]
        best_trl = max(trl, key=lambda r: r["useful_tps"], default=None)
        row["best_trl"] = best_trl["config"] if best_trl else None
        if "failed" in row:
            continue
        row["x_upstream"] = row["useful_tps"] / upstream["useful_tps"]
        row["x_upstream_rss"] = row["peak_rss_gb"] / upstream["peak_rss_gb"]
        row["x_best_trl"] = row["useful_tps"] / best_trl["useful_tps"] if best_trl else None
    return rows


def environment(args, peak: float, params: int, trl: str | None, packing_errors: dict) -> dict:
    import deepspeed
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl,
            "deepspeed": deepspeed.__version__,
        },
        "threads": args.threads,
        "matmul_peak_gflops": peak / 1e9,
        "model": Path(args.model).name,
        "parameters": params,
        "batch_size": args.batch_size,
        "max_seq_len": args.max_seq_len,
        "steps": args.steps,
        "repeats": args.repeats,
        "position_packing_max_logit_error": packing_errors,
    }


def table_row(row: dict) -> str:
    start = f"| {row['dataset']} | {row['config']} | {row['attention_correct']} |"
    if "failed" in row:
        return start + f" failed: {row['failed']} |" + " |" * 7
    best = f"{row['x_best_trl']:.2f}x" if row["x_best_trl"] is not None else "n/a"
    return (
        f"{start} {row['useful_tps']:.1f} | {row['x_upstream']:.2f}x | {best} | {row['step_s']:.2f} | "
        f"{row['peak_rss_gb']:.2f} | {row['x_upstream_rss']:.2f}x | {row['loss_tokens_per_step']:.0f} | "
        f"{100 * row['mfu']:.1f}% |"
    )


def match_notes(rows: list[dict]) -> list[str]:
    """Per dataset: do TRL's training tokens and per-step losses equal main.py's (same batches, same maths)?"""
    notes = []
    for row in rows:
        tokens = row.get("tokens")
        if row["config"] != "TRL dynamic padding" or tokens is None:
            continue
        same = tokens["trl_samples"] == tokens["dschat_samples"] and not tokens["differing"]
        verdict = (
            "equal main.py's, sample for sample in its order"
            if same
            else f"differ from main.py's ({tokens['trl_samples']} vs {tokens['dschat_samples']} samples, "
            f"first differing: {tokens['differing']})"
        )
        dschat = next(r for r in rows if r["dataset"] == row["dataset"] and r["config"] == "dschat defaults")
        losses = f"per-step losses {row['losses']} (TRL) vs {dschat.get('losses')} (dschat defaults)"
        notes.append(f"- {row['dataset']}: TRL's training tokens {verdict}; {losses}.")
    return notes


def packing_note(env: dict) -> list[str]:
    """What the position_ids packing check found (nothing when TRL did not run)."""
    errors = env["position_packing_max_logit_error"]
    if not errors:
        return []
    found = ", ".join(f"{kernel} {error:.1e}" for kernel, error in errors.items())
    return [
        "TRL's padding_free and packing mark sample boundaries only by restarting position_ids in one flattened "
        f"row. Checked here: the largest logit error of a sample packed after another vs run alone is {found} "
        f"(under {LOGIT_TOLERANCE:g} means they stay apart). transformers builds a per-sample causal mask from "
        "position_ids when a batch has no attention mask and the model no cache (TRL passes use_cache=False). "
        "dschat's packing passes a block mask.",
    ]


def format_report(env: dict, rows: list[dict]) -> str:
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in env["versions"].items())
    lines = [
        HEADING,
        "",
        f"Measured {env['date']} by `python bench/bench_peers.py` on {env['machine']}; {versions}; "
        f"torch threads {env['threads']}, fp32. Model `{env['model']}` ({env['parameters'] / 1e6:.1f}M "
        f"parameters), micro-batch {env['batch_size']}, max length {env['max_seq_len']}, {env['steps']} measured "
        f"optimizer steps after one warm-up, median of {env['repeats']} interleaved round(s), every run a fresh "
        f"process. Matmul peak measured in the same run: {env['matmul_peak_gflops']:.1f} GFLOP/s (fp32).",
        "",
        "Same text and loss for all: dschat renders the data (upstream's ` Human: ... Assistant: ...` plus EOS) and "
        "TRL gets that text, loss on every token (completion_only_loss off). Same optimizer: AdamW lr 1e-5, betas "
        "0.9/0.95, eps 1e-8, weight decay 0, clip 1.0, cosine over the epoch, no warm-up, dropout 0, no gradient "
        "checkpointing. TRL dynamic padding and padding_free read main.py's sampler order, so they train on "
        "dschat's exact batches; group_by_length and packing use TRL's own samplers.",
        "",
        "Useful tok/s = loss-bearing tokens (labels after the shift that are not -100) per second of optimizer "
        "step (forward, backward, clip, AdamW; data loading excluded for both). MFU = 6 x parameters x real "
        "tokens/s / matmul peak. x best TRL: against the fastest attention-correct TRL configuration.",
        "",
        "| data | config | attention-correct | useful tok/s | x upstream | x best TRL | step s | peak RSS GB "
        "| x upstream RSS | loss tokens/step | MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[table_row(row) for row in rows],
        "",
        *packing_note(env),
        *match_notes(rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.model is None:
        from dschat.default_model import default_model_dir

        args.model = str(default_model_dir())
    trl = trl_version()
    configs = list(DSCHAT_CONFIGS) + (list(TRL_CONFIGS) if trl else [])
    peak, params = matmul_peak_flops(args.threads), count_params(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        every = datasets(workdir)
        data = {DATASET_KEYS[key]: every[DATASET_KEYS[key]] for key in args.datasets}
        packing_errors = position_packing_errors(args.model, every["demo (shipped)"], workdir) if trl else {}
        runs = run_rounds(args, data, configs, workdir)
    rows = collect(runs, packing_errors, params, peak)
    env = environment(args, peak, params, trl, packing_errors)
    report = format_report(env, rows)
    print(report)
    replace_section(args.output, report)  # the other benchmarks' sections stay
    output = Path(args.output)
    json_path = output.with_name(f"{output.stem}_peers.json")
    json_path.write_text(json.dumps({"environment": env, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
