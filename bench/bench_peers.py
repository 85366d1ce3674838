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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_batching import count_params, datasets, matmul_peak_flops, run_mode
from results_file import replace_section
from transformers import TrainerCallback
from worker import ROOT, peak_rss_kb, read_peaks, report_peaks

from dschat.utils.loss_normalization import count_targets
from dschat.utils.optim import ADAM_BETAS, ADAM_EPS

HEADING = "# Peer benchmark: dschat vs TRL SFTTrainer vs upstream padding"
SEED = 1234  # main.py's default --seed
LEARNING_RATE = 1e-5  # what bench_batching.run_mode passes to main.py
DATA_SPLIT = "10,0,0"  # all data to phase 1, as run_mode
DSCHAT_CONFIGS = {
    "upstream (pad to max)": ["--pad_to_max_len"],
    "dschat defaults": [],
    "dschat packing": ["--packing"],
}
# SFTConfig settings per TRL configuration. "sequential" reads the data in the order given, which is dschat's
# sampler order, so plain padding trains on exactly dschat's batches; group_by_length and packing use TRL's samplers.
TRL_CONFIGS = {
    "TRL dynamic padding": {"train_sampling_strategy": "sequential"},
    "TRL group_by_length": {"train_sampling_strategy": "group_by_length"},
    # TRL refuses padding_free with max_length set (it would not truncate): the texts come tokenized and truncated.
    "TRL padding_free": {"padding_free": True, "max_length": None, "train_sampling_strategy": "sequential"},
    "TRL packing (bfd)": {"packing": True},
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


# --- The TRL side: dschat's text, an SFTTrainer configured like main.py, step times and token counts -------------


def dschat_train_texts(data_dir: str, cache_dir: str, tokenizer) -> list[str]:
    """dschat's training texts (upstream format + EOS, rendered by dschat) in the order main.py's sampler draws them.

    The same steps as data_utils.tokenize_source and loaders.train_sampler: phase-1 split indices, render, then
    upstream's DistributedSampler (shuffle, seed 0) over the kept samples.
    """
    from torch.utils.data import DistributedSampler

    from dschat.utils.data import prompts, splits
    from dschat.utils.data.data_utils import render_sample
    from dschat.utils.data.raw_datasets import get_raw_dataset

    raw = get_raw_dataset(data_dir, cache_dir, SEED, 0)
    rows = raw.get_train_data()
    index = splits.split_indices(cache_dir, raw.dataset_name_clean, SEED, "train", DATA_SPLIT, 0, len(rows))
    rendered = (render_sample(raw, rows[i], prompts.UPSTREAM, tokenizer, tokenizer.eos_token) for i in index)
    texts = [sample[0] for sample in rendered if sample is not None]
    return [texts[i] for i in DistributedSampler(texts, num_replicas=1, rank=0)]


def dschat_train_ids(spec: dict, tokenizer) -> list[list[int]]:
    """The token ids main.py trains on (its own data pipeline and cache), in its sampler's order."""
    from torch.utils.data import DistributedSampler

    from dschat import config
    from dschat.flags import parse_train_args
    from dschat.utils.data.data_utils import prepare_datasets

    flags = ["--model_name_or_path", spec["model"], "--data_path", spec["data"], "--data_split", DATA_SPLIT]
    flags += ["--data_output_path", spec["cache"], "--max_seq_len", str(spec["max_seq_len"])]
    train, _ = prepare_datasets(config.from_args(parse_train_args(flags)).data, tokenizer)
    return [train.samples.sample(i)[0].tolist() for i in DistributedSampler(train, num_replicas=1, rank=0)]


def trl_columns(texts: list[str], tokenizer, options: dict, max_seq_len: int) -> dict[str, list]:
    """The dataset TRL gets: a "text" column; token ids for padding_free, cut as TRL's own preparation would."""
    if options.get("max_length", max_seq_len) is not None:
        return {"text": texts}
    return {"input_ids": [tokenizer(text=text)["input_ids"][:max_seq_len] for text in texts]}


def sft_config(spec: dict, options: dict):
    """SFTConfig matching main.py: fp32, no checkpointing, its AdamW and cosine schedule, loss on every token."""
    from trl import SFTConfig

    settings = dict(
        output_dir=spec["out"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        max_length=spec["max_seq_len"],
        completion_only_loss=False,  # main.py's default --train_on_prompt true: loss on prompt and answer
        num_train_epochs=1,  # the cosine runs over the epoch, as main.py's; StepRecorder stops the run early
        optim="adamw_torch",
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        adam_beta1=ADAM_BETAS[0],
        adam_beta2=ADAM_BETAS[1],
        adam_epsilon=ADAM_EPS,
        max_grad_norm=1.0,  # DeepSpeed's gradient_clipping in main.py's config
        lr_scheduler_type="cosine",
        warmup_steps=0,
        seed=SEED,
        data_seed=SEED,
        bf16=False,  # SFTConfig defaults to bf16 and gradient checkpointing; main.py here runs neither
        fp16=False,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
    )
    return SFTConfig(**{**settings, **options})


class StepRecorder(TrainerCallback):
    """Times each optimizer step (begin to end: forward, backward, clip, AdamW, schedule), keeps its logged loss
    and stops training after ``stop_after`` steps."""

    def __init__(self, stop_after: int):
        self.stop_after, self.seconds, self.losses, self.started = stop_after, [], [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)
        control.should_training_stop = state.global_step >= self.stop_after

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


class CountingCollator:
    """TRL's collator, recording each batch's real, loss-bearing and computed tokens (metrics.jsonl's columns)."""

    def __init__(self, collate):
        self.collate, self.batches = collate, []

    def __call__(self, examples):
        batch = self.collate(examples)
        # Padding-free rows hold no padding: every position is a real token.
        mask = batch.get("attention_mask")
        real = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        self.batches.append(
            {
                "tokens": real,
                "loss_tokens": count_targets(batch["labels"]),  # labels[:, 1:] != -100, as main.py counts
                "padded_tokens": batch["input_ids"].numel(),
            }
        )
        return batch


def token_check(trainer_ids: list[list[int]], dschat_ids: list[list[int]]) -> dict:
    """Where TRL's training tokens (dataset order) differ from main.py's."""
    differing = [i for i, (a, b) in enumerate(zip(trainer_ids, dschat_ids)) if a != b]
    return {"trl_samples": len(trainer_ids), "dschat_samples": len(dschat_ids), "differing": differing[:10]}


def run_trl_worker(spec_path: str) -> None:
    """One TRL run in this process: metrics.jsonl and summary.json in spec["out"], peak RSS on the last line."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from dschat.utils.model.model_utils import create_hf_model, load_hf_tokenizer

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    options = TRL_CONFIGS[spec["config"]]
    tokenizer = load_hf_tokenizer(spec["model"])
    texts = dschat_train_texts(spec["data"], spec["cache"], tokenizer)
    # main.py's model builder: fp32, dropout 0, eos/pad ids and vocab as main.py sets them.
    model = create_hf_model(AutoModelForCausalLM, spec["model"], tokenizer, dropout=0.0)
    recorder = StepRecorder(spec["steps"] + 1)
    trainer = SFTTrainer(
        model=model,
        args=sft_config(spec, options),
        train_dataset=Dataset.from_dict(trl_columns(texts, tokenizer, options, spec["max_seq_len"])),
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    # Wrapped after construction: TRL refuses a custom collator with padding_free.
    trainer.data_collator = counter = CountingCollator(trainer.data_collator)
    trainer.train()
    peak_kb = peak_rss_kb()  # before the token check below allocates anything
    rows = [
        {**counts, "time": seconds, "loss": loss}
        for counts, seconds, loss in zip(counter.batches, recorder.seconds, recorder.losses)
    ]
    out = Path(spec["out"])
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {"attn_implementation": model.config._attn_implementation}
    if not options.get("packing"):  # packed rows are not samples; their loss tokens per step show the match
        trl_ids = list(trainer.train_dataset["input_ids"])
        summary["tokens"] = token_check(trl_ids, dschat_train_ids(spec, tokenizer))
    (out / "summary.json").write_text(json.dumps(summary))
    report_peaks(rss_kb=peak_kb)


def run_trl(args, config: str, data: Path, out: Path) -> dict:
    """Run one TRL configuration in a fresh process; its summary plus peak RSS."""
    out.mkdir(parents=True)
    spec = {
        "config": config,
        "model": args.model,
        "data": str(data),
        "cache": str(out / "cache"),
        "out": str(out),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_seq_len": args.max_seq_len,
        "threads": args.threads,
    }
    (out / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, __file__, "--trl_worker", str(out / "spec.json")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{proc.stderr[-3000:]}")
    peak_kb = read_peaks(proc.stdout)["rss_kb"]
    return {"peak_rss_gb": peak_kb / 1024**2, **json.loads((out / "summary.json").read_text())}


# --- Is position_ids-only packing attention-correct on this backend? ----------------------------------------------


def position_packing_errors(model_dir: str, demo: Path, workdir: Path) -> dict[str, float]:
    """Per attention kernel: the largest logit difference between the second of two demo samples run alone and
    the same sample after the first in one row of TRL's padding-free collator (position_ids restart, no attention
    mask). About 1e-5 if the kernel keeps samples apart, about 10 if the second sample attends to the first."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from dschat.utils.model.model_utils import load_hf_tokenizer

    tokenizer = load_hf_tokenizer(model_dir)
    texts = dschat_train_texts(str(demo), str(workdir / "check-cache"), tokenizer)
    ids = [tokenizer(text=text)["input_ids"][:64] for text in texts[:2]]
    row = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": sample} for sample in ids]
    )
    inputs = {key: value for key, value in row.items() if key != "labels"}
    errors = {}
    for kernel in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, attn_implementation=kernel, dtype=torch.float32
        )
        # use_cache=False as TRL's compute_loss passes: with a cache, transformers skips the packed-sequence mask.
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ids[1]]), use_cache=False).logits[0]
            packed = model(**inputs, use_cache=False).logits[0, len(ids[0]) :]
        errors[kernel] = float((packed - alone).abs().max())
    return errors


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
    if sys.argv[1:2] == ["--trl_worker"]:
        run_trl_worker(sys.argv[2])
        return
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
