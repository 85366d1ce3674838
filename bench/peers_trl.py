"""bench_peers.py's TRL side: dschat's own training text and ids, an SFTTrainer configured like main.py, its
step times and token counts (each configuration in a fresh process: ``python bench/peers_trl.py --trl_worker
SPEC``), and whether position_ids-only packing keeps samples apart on this backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from worker import peak_rss_kb, read_peaks, report_peaks

from dschat.utils.loss_normalization import count_targets
from dschat.utils.optim import ADAM_BETAS, ADAM_EPS

SEED = 1234  # main.py's default --seed
LEARNING_RATE = 1e-5  # what bench_batching.run_mode passes to main.py
DATA_SPLIT = "10,0,0"  # all data to phase 1, as run_mode
# SFTConfig settings per TRL configuration. "sequential" reads the data in the order given, which is dschat's
# sampler order, so plain padding trains on exactly dschat's batches; group_by_length and packing use TRL's samplers.
TRL_CONFIGS = {
    "TRL dynamic padding": {"train_sampling_strategy": "sequential"},
    "TRL group_by_length": {"train_sampling_strategy": "group_by_length"},
    # TRL refuses padding_free with max_length set (it would not truncate): the texts come tokenized and truncated.
    "TRL padding_free": {"padding_free": True, "max_length": None, "train_sampling_strategy": "sequential"},
    "TRL packing (bfd)": {"packing": True},
}


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


if __name__ == "__main__":
    if sys.argv[1:2] != ["--trl_worker"]:
        raise SystemExit("usage: python bench/peers_trl.py --trl_worker SPEC.json (bench_peers.py runs it)")
    run_trl_worker(sys.argv[2])
