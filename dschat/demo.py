"""The demo: fine-tune the embedded SmolLM2-135M-Instruct on the shipped "Pip" data on CPU, show before/after.

    make demo                    # or: python -m dschat.demo [--output_dir DIR] [--retrain]

Steps: convert the packaged GGUF model once -> evaluate it on held-out prompts (perplexity, BLEU, sample
answers) -> fine-tune through training_scripts/cpu/run_smollm2.sh (the same main.py and DeepSpeed engine as
every other scale) -> evaluate the result -> print a before/after table and answers side by side -> save a
loss curve next to the model -> print the command to chat with it. Re-running reuses every finished step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from dschat import run_dir
from dschat.errors import DschatError, run_cli
from dschat.utils.dist import LAUNCHER_VARS
from dschat.utils.log import setup_logging

logger = logging.getLogger("dschat.demo")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "demo"
TRAIN_SCRIPT = (
    ROOT / "training" / "step1_supervised_finetuning" / "training_scripts" / "cpu" / "run_smollm2.sh"
)
# Sized for a 2-core CPU: the script's LoRA (rank 16 on every linear layer) over the 357 short conversations.
TRAIN_FLAGS = [
    "--num_train_epochs",
    "2",
    "--max_steps",
    "0",
    "--lora_learning_rate",
    "1e-3",
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "8",
    "--log_interval",
    "10",
    "--lr_scheduler_type",
    "cosine",
    "--num_warmup_steps",
    "5",
]
SHOW_SAMPLES = 4
WRAP = 44


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output_dir", default=str(ROOT / "output_demo"), help="Where the demo writes everything."
    )
    parser.add_argument(
        "--retrain", action="store_true", help="Fine-tune again even if a finished model exists."
    )
    parser.add_argument("--max_new_tokens", type=int, default=48, help="Answer length for the evaluations.")
    parser.add_argument(
        "--max_samples", type=int, default=0, help="Evaluate on the first N held-out prompts (0: all)."
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)."
    )
    parser.add_argument(
        "--base_model", default=None, help="Model dir to fine-tune (default: embedded SmolLM2)."
    )
    parser.add_argument(
        "--data_path", default=str(DATA), help="Training data dir with train.jsonl and eval.jsonl."
    )
    parser.add_argument("--train_flags", default="", help="Extra main.py flags appended to the demo's own.")
    return parser.parse_args(argv)


def cached_evaluation(name: str, model_dir: Path, samples, args, out: Path) -> dict:
    """Evaluate a model (perplexity, BLEU, answers), reusing the stored report for the same model and prompts."""
    from dschat.inference.evaluate import evaluate_model
    from dschat.inference.generation import GenerationSettings

    weights = model_dir / "model.safetensors"
    key = hashlib.sha256(
        json.dumps(
            [str(model_dir), weights.stat().st_mtime_ns, samples, args.max_new_tokens], default=str
        ).encode()
    ).hexdigest()
    path = out / f"eval_{name}.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            logger.info("%s model: reusing its evaluation (%s)", name, path)
            return stored["report"]
    logger.info(
        "%s model: evaluating on %d held-out prompts (perplexity, greedy answers, BLEU)", name, len(samples)
    )
    report = evaluate_model(
        str(model_dir),
        samples,
        prompt_template="chat_template",
        settings=GenerationSettings(max_new_tokens=args.max_new_tokens),
        batch_size=8,
        device="cpu",
        dtype="fp32",
    )
    path.write_text(json.dumps({"key": key, "report": report}, indent=1))
    return report


def model_is_complete(model_dir: Path) -> bool:
    return all(
        (model_dir / name).is_file() for name in ("config.json", "model.safetensors", "dschat_run.json")
    )


def fine_tune(base_dir: Path, model_dir: Path, args) -> float:
    """Run the CPU launcher script (main.py through DeepSpeed); its output streams to the console."""
    env = {
        key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS
    }  # a fresh one-rank run
    env.update(
        MODEL_DIR=str(base_dir),
        DATA=args.data_path,
        PYTHON=sys.executable,
        OMP_NUM_THREADS=str(args.threads),
        TOKENIZERS_PARALLELISM="false",
    )
    command = [
        "bash",
        str(TRAIN_SCRIPT),
        str(model_dir),
        "0",
        str(base_dir),
        *TRAIN_FLAGS,
        "--data_output_path",
        str(model_dir.parent / "data_cache"),
        *args.train_flags.split(),
    ]
    logger.info("fine-tuning: %s", " ".join(command))
    start = time.time()
    if subprocess.run(command, env=env).returncode != 0:
        raise DschatError(f"fine-tuning failed: see {model_dir / 'training.log'}")
    return time.time() - start


def save_loss_curve(model_dir: Path) -> Path:
    """Plot the per-step training loss (metrics.jsonl) and each evaluation (eval.jsonl) to loss_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (model_dir / run_dir.METRICS_NAME).read_text().splitlines()]
    eval_file = model_dir / run_dir.EVAL_METRICS_NAME
    evals = [json.loads(line) for line in eval_file.read_text().splitlines()] if eval_file.is_file() else []
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], linewidth=1.5, label="training loss")
    if evals:
        axis.plot(
            [r["step"] for r in evals], [r["loss"] for r in evals], "o--", label="eval loss (held-out split)"
        )
        axis.legend()
    axis.set_xlabel("micro-step")
    axis.set_ylabel("loss (every token, as upstream)")
    axis.set_title("SmolLM2-135M-Instruct fine-tuned on the Pip data (CPU)")
    axis.grid(alpha=0.3)
    path = model_dir / "loss_curve.png"
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def side_by_side(samples, before: dict, after: dict, count: int) -> str:
    """The first ``count`` held-out prompts with the base and fine-tuned answers in two columns."""
    lines = []
    for i in range(min(count, len(samples))):
        question = samples[i][0][-1]["content"]
        lines.append(f"\nQ: {question}")
        left = textwrap.wrap(before["samples"][i]["answer"].strip() or "(empty)", WRAP)
        right = textwrap.wrap(after["samples"][i]["answer"].strip() or "(empty)", WRAP)
        lines.append(f"  {'before (base model)':<{WRAP}} | after (fine-tuned)")
        for a, b in zip(left + [""] * (len(right) - len(left)), right + [""] * (len(left) - len(right))):
            lines.append(f"  {a:<{WRAP}} | {b}")
    return "\n".join(lines)


ANSWER_PPL_NOTE = (
    "answer ppl: perplexity of the held-out reference answers given their prompts (answer tokens only, both models "
    "in the chat template); the training log's ppl covers every token of the eval split, prompts included"
)


def summary_table(before: dict, after: dict) -> str:
    rows = [("model", "answer ppl", "BLEU", "answer tokens", "tokens/s")]
    for name, r in (("base", before), ("fine-tuned", after)):
        cells = (
            f"{r['ppl']:.2f}",
            f"{r['bleu']:.2f}",
            f"{r['mean_answer_tokens']:.1f}",
            f"{r['tokens_per_second']:.1f}",
        )
        rows.append((name, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
    return table + "\n" + ANSWER_PPL_NOTE


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    import torch

    from dschat.default_model import default_model_dir
    from dschat.inference.evaluate import load_samples

    torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    base_dir = Path(args.base_model).resolve() if args.base_model else default_model_dir()
    samples = load_samples(
        args.data_path, split="eval", max_samples=args.max_samples, data_output_path=str(out / "data_cache")
    )
    before = cached_evaluation("base", base_dir, samples, args, out)
    if args.retrain or not model_is_complete(model_dir):
        train_seconds = fine_tune(base_dir, model_dir, args)
        logger.info("fine-tuning took %.0f s", train_seconds)
    else:
        logger.info("reusing the fine-tuned model in %s (pass --retrain to train again)", model_dir)
    after = cached_evaluation("tuned", model_dir, samples, args, out)
    curve = save_loss_curve(model_dir)
    print("\n=== Before / after on the held-out Pip prompts ===")
    print(summary_table(before, after))
    print(side_by_side(samples, before, after, SHOW_SAMPLES))
    print(f"\nloss curve: {curve}")
    print(f"demo time: {time.time() - started:.0f} s")
    print(f"\nChat with the fine-tuned model:\n  .venv/bin/python chat.py --path {model_dir}")
    print("Serve it (OpenAI-compatible API, chat page at http://127.0.0.1:8000/):")
    print(f"  .venv/bin/python -m dschat.serve --path {model_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
