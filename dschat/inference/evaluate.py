"""Measure trained models on a dataset: response perplexity, generated answers, BLEU, answer length, speed.

    python -m dschat.inference.evaluate --model ./base ./output --data_path data.jsonl --max_samples 100 \\
        --output report.json

For each model: perplexity of the reference answers given their prompts (token-level mean NLL over answer
tokens only, prompts rendered in the model's training format), greedy answers generated in left-padded
batches, corpus BLEU of answers vs references (sacreBLEU, with its signature), mean answer length in tokens
and generation speed. The pieces are plain functions so other tools (the demo) can call them.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from dschat import run_dir
from dschat.errors import DschatError, run_cli
from dschat.inference import generation, loading
from dschat.inference.perplexity import Sample, response_perplexity, to_messages
from dschat.utils import atomic
from dschat.utils.data import prompts
from dschat.validation import unwritable_dir_problem

logger = logging.getLogger(__name__)

REPORT_KEYS = (
    "model",
    "prompt_template",
    "ppl",
    "bleu",
    "bleu_signature",
    "mean_answer_tokens",
    "tokens_per_second",
    "n_samples",
    "samples",
)


def load_samples(
    data_path: str,
    split: str = "eval",
    max_samples: int = 0,
    data_output_path: str = "/tmp/data_files/",
    seed: int = 1234,
) -> list[Sample]:
    """(prompt messages, reference answer) pairs of one dataset split, in order; the first max_samples (0 = all)."""
    from dschat.utils.data.raw_datasets import get_raw_dataset

    raw = get_raw_dataset(data_path, data_output_path, seed, local_rank=0)
    rows = raw.get_eval_data() if split == "eval" else raw.get_train_data()
    samples = []
    for row in rows:
        messages = raw.get_conversation(row)
        if not messages or messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
            continue
        samples.append((messages[:-1], messages[-1]["content"]))
        if max_samples and len(samples) >= max_samples:
            break
    if not samples:
        raise DschatError(f"--data_path {data_path!r}: its {split} split has no usable prompt/answer samples")
    return samples


def generate_answers(
    model,
    tokenizer,
    samples: Sequence[Sample],
    prompt_template: str,
    settings: generation.GenerationSettings,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Answers to every prompt, with rendered prompts, token counts and wall time.

    Prompts are batched by equal token length (generation.equal_length_batches), so greedy answers are the
    same for every ``batch_size``.
    """
    from tqdm import tqdm

    texts = [prompts.generation_prompt(to_messages(p), prompt_template, tokenizer) for p, _ in samples]
    stop_ids = generation.stop_token_ids(model, tokenizer, prompt_template)
    context = loading.max_context(model, tokenizer)
    if context is not None and settings.max_new_tokens >= context:
        raise DschatError(
            f"--max_new_tokens {settings.max_new_tokens} leaves no room for a prompt in the model's "
            f"{context}-token context; use a smaller value"
        )
    max_prompt_tokens = context - settings.max_new_tokens if context else None
    specials = prompts.adds_special_tokens(prompt_template)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=specials)["input_ids"]]
    lengths = [min(n, max_prompt_tokens) if max_prompt_tokens else n for n in lengths]
    answers, new_tokens, seconds = [""] * len(texts), [0] * len(texts), 0.0
    with tqdm(total=len(texts), desc="generate", unit="sample", disable=not progress, file=sys.stderr) as bar:
        for batch in generation.equal_length_batches(lengths, batch_size):
            out = generation.generate_batch(
                model,
                tokenizer,
                [texts[i] for i in batch],
                settings,
                stop_ids,
                specials,
                prompts.stop_markers(prompt_template),
                max_prompt_tokens,
            )
            for i, text, count in zip(batch, out.texts, out.new_tokens):
                answers[i], new_tokens[i] = text, count
            seconds += out.seconds
            bar.update(len(batch))
    return {"prompts": texts, "answers": answers, "new_tokens": new_tokens, "seconds": seconds}


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """sacreBLEU corpus BLEU of hypotheses against one reference each, and its signature string."""
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise DschatError(
            "BLEU needs sacrebleu: pip install sacrebleu  (or pip install -e .[eval])"
        ) from None
    bleu = BLEU()
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(bleu.get_signature())


def evaluate_loaded(
    model,
    tokenizer,
    samples: Sequence[Sample],
    prompt_template: str = prompts.UPSTREAM,
    eos_token_appended: bool = True,
    settings: generation.GenerationSettings | None = None,
    batch_size: int = 8,
    progress: bool = True,
    name: str | None = None,
) -> dict:
    """The report of one loaded model, keys as REPORT_KEYS (``model`` is ``name``)."""
    if not samples:
        raise DschatError("no samples to evaluate")
    settings = settings or generation.GenerationSettings()
    context = loading.max_context(model, tokenizer)
    eos = tokenizer.eos_token if eos_token_appended and prompt_template == prompts.UPSTREAM else ""
    ppl = response_perplexity(model, tokenizer, samples, prompt_template, eos, batch_size, context)
    out = generate_answers(model, tokenizer, samples, prompt_template, settings, batch_size, progress)
    references = [reference for _, reference in samples]
    bleu, signature = corpus_bleu(out["answers"], references)
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in out["answers"]]
    rows = zip(out["prompts"], out["answers"], references)
    return {
        "model": name,
        "prompt_template": prompt_template,
        "ppl": ppl,
        "bleu": bleu,
        "bleu_signature": signature,
        "mean_answer_tokens": sum(lengths) / len(lengths),
        "tokens_per_second": sum(out["new_tokens"]) / out["seconds"] if out["seconds"] > 0 else 0.0,
        "n_samples": len(samples),
        "samples": [{"prompt": p, "answer": a, "reference": r} for p, a, r in rows],
    }


def evaluate_model(
    model_dir: str,
    samples: Sequence[Sample],
    prompt_template: str | None = None,
    settings: generation.GenerationSettings | None = None,
    batch_size: int = 8,
    device: str = "auto",
    dtype: str = "auto",
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict:
    """Load a model dir and report on it, in the prompt format it was trained with unless one is given."""
    info = run_dir.read_run_info(model_dir)
    template = prompt_template or info.get("prompt_template", prompts.UPSTREAM)
    model, tokenizer = loading.load_model(model_dir, device, dtype, trust_remote_code)
    report = evaluate_loaded(
        model,
        tokenizer,
        samples,
        template,
        info.get("eos_token_appended", True),
        settings,
        batch_size,
        progress,
        name=str(model_dir),
    )
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return report


def format_table(reports: Sequence[dict]) -> str:
    """A short fixed-width table: model, ppl, BLEU, mean answer length, tokens/s."""
    width = max(len("model"), *(len(r["model"]) for r in reports))
    lines = [f"{'model':<{width}}  {'ppl':>10}  {'BLEU':>6}  {'answer_tokens':>13}  {'tokens/s':>9}"]
    for r in reports:
        lines.append(
            f"{r['model']:<{width}}  {r['ppl']:>10.3f}  {r['bleu']:>6.2f}  {r['mean_answer_tokens']:>13.1f}  "
            f"{r['tokens_per_second']:>9.1f}"
        )
    return "\n".join(lines)


def report_path_problem(path: str) -> str | None:
    """Why the report cannot be written to ``path`` (a missing folder is fine: it is created), or None."""
    if Path(path).is_dir():
        return f"--output {path!r} is a directory; name the report file, e.g. {os.path.join(path, 'report.json')}"
    if problem := unwritable_dir_problem(os.path.dirname(os.path.abspath(path))):
        return f"--output {path!r}: its folder {problem}; choose another path"
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", nargs="+", required=True, help="One or more model directories to compare.")
    data = parser.add_argument_group("data")
    data.add_argument("--data_path", required=True, help="A dataset name or local file/dir, as for main.py.")
    data.add_argument("--split", choices=("eval", "train"), default="eval", help="Which split to score.")
    data.add_argument("--max_samples", type=int, default=100, help="Score the first N samples (0 = all).")
    data.add_argument("--data_output_path", default="/tmp/data_files/", help="Cache dir for split indices.")
    data.add_argument(
        "--seed",
        type=int,
        default=1234,
        help="Seed of the dataset's eval carving (use main.py's --seed to score its held-out split) and of sampling.",
    )
    run = parser.add_argument_group("evaluation")
    run.add_argument(
        "--prompt_template",
        choices=prompts.INFERENCE_PROMPT_TEMPLATES,
        default=None,
        help="One format for every model compared. Default: the format the trained models share "
        "(dschat_run.json), which a base model without run info follows too; upstream's if none has one.",
    )
    run.add_argument("--max_new_tokens", type=int, default=128, help="Most tokens per generated answer.")
    run.add_argument("--batch_size", type=int, default=8, help="Samples per forward / generate call.")
    run.add_argument("--output", default=None, help="Write the JSON report (per model, per sample) here.")
    generation.add_generation_args(parser, seed=False)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problems = generation.validate_generation_args(args)
    problems += [f"--batch_size {args.batch_size} must be at least 1"] if args.batch_size < 1 else []
    problems += [f"--max_samples {args.max_samples} must be >= 0"] if args.max_samples < 0 else []
    problems += [f"--model {m!r} is not a directory" for m in args.model if not Path(m).is_dir()]
    problems += [problem] if args.output and (problem := report_path_problem(args.output)) else []
    if problems:
        raise DschatError("; ".join(problems))
    if args.output:  # its folder now, not after the models were scored
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    from dschat.utils.log import setup_logging

    setup_logging()
    samples = load_samples(args.data_path, args.split, args.max_samples, args.data_output_path, args.seed)
    logger.info("scoring %d samples of %s (%s split)", len(samples), args.data_path, args.split)
    settings = generation.settings_from_args(args)
    template, why = run_dir.comparison_template(args.model, args.prompt_template)
    logger.info("prompt format: %s (%s)", template, why)
    reports = []
    for model_dir in args.model:
        torch.manual_seed(args.seed)
        report = evaluate_model(
            model_dir,
            samples,
            template,
            settings,
            args.batch_size,
            args.device,
            args.dtype,
            trust_remote_code=args.trust_remote_code,
        )
        reports.append(report)
    if args.output:
        summary = {
            "data_path": args.data_path,
            "split": args.split,
            "max_samples": args.max_samples,
            "models": reports,
        }
        atomic.write_json(args.output, summary, indent=2, ensure_ascii=False)
        logger.info("report written to %s", args.output)
    print(f"prompt format: {template} ({why})")
    print(format_table(reports))


if __name__ == "__main__":
    sys.exit(run_cli(main))
