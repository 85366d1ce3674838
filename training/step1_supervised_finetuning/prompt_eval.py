#!/usr/bin/env python
"""Compare a base model with its step-1 fine-tune on six fixed prompts (upstream's prompt_eval.py).

    python prompt_eval.py --model_name_or_path_baseline facebook/opt-1.3b --model_name_or_path_finetune ./output

For each prompt the baseline's greedy answer is printed, then the fine-tune's, under upstream's header lines.
dschat adds: --generation for upstream's commented-out decoding modes, --prompts_file for your own prompts,
--device and --dtype.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from dschat import run_dir
from dschat.errors import DschatError, run_cli
from dschat.inference.loading import DTYPES, resolve_device
from dschat.utils.data import prompts
from dschat.utils.data.local_records import deepest_line, too_deep_error
from dschat.utils.log import setup_logging
from dschat.utils.model.model_utils import create_hf_model, load_hf_tokenizer

logger = logging.getLogger("dschat.prompt_eval")

EOT_TOKEN = "<|endoftext|>"  # what upstream's --add_eot_token registers
QUESTIONS = {
    "English": [
        "Please tell me about Microsoft in a few sentence?",
        "Explain the moon landing to a 6 year old in a few sentences.",
        "Write a short poem about a wise frog.",
        "Who was president of the United States in 1955?",
        "How does a telescope work?",
        "Why do birds migrate south for the winter?",
    ],
    "Chinese": [
        "请用几句话介绍一下微软？",
        "用几句话向一个6岁的孩子解释登月。",
        "写一首关于一只聪明青蛙的短诗。",
        "1955年的美国总统是谁？",
        "望远镜是如何工作的？",
        "鸟类为什么在冬天向南迁徙？",
    ],
    "Japanese": [
        "マイクロソフトについて数文で教えてください。",
        "6歳の子どもに月面着陸を数文で説明してください。",
        "賢いカエルについての短い詩を書いてください。",
        "1955年のアメリカ合衆国の大統領は誰でしたか？",
        "望遠鏡はどのような仕組みで動きますか？",
        "鳥はなぜ冬になると南へ渡るのですか？",
    ],
}
# --generation choice -> the name in the header lines (upstream: "==========Baseline: Greedy=========").
MODES = {
    "greedy": "Greedy",
    "sample": "Multinomial sampling",
    "beam": "Beam Search",
    "beam_sample": "Beam Multinomial Sampling",
    "diverse_beam": "Diverse Beam Search",
    "contrastive": "Contrastive Search",
}
# transformers >= 4.56 runs these two from Hub repos (transformers-community/...), i.e. remote code.
HUB_MODES = ("diverse_beam", "contrastive")
PROMPT_END = "====================prompt end============================="


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_name_or_path_baseline",
        type=str,
        required=True,
        help="The pretrained base model (also the source of the tokenizer).",
    )
    parser.add_argument(
        "--model_name_or_path_finetune", type=str, required=True, help="The step-1 output dir."
    )
    parser.add_argument("--num_beams", type=int, default=1, help="Beams for the beam modes.")
    parser.add_argument("--num_beam_groups", type=int, default=1, help="Groups for diverse beam search.")
    parser.add_argument("--top_k", type=int, default=4, help="Candidates per step of contrastive search.")
    parser.add_argument(
        "--penalty_alpha", type=float, default=0.6, help="Degeneration penalty of contrastive search."
    )
    parser.add_argument("--num_return_sequences", type=int, default=1, help="Answers per prompt.")
    parser.add_argument("--max_new_tokens", type=int, default=100, help="Most tokens per answer.")
    parser.add_argument(
        "--language",
        type=str,
        default="English",
        choices=list(QUESTIONS),
        help="Which list of six prompts to use.",
    )
    parser.add_argument(
        "--add_eot_token",
        action="store_true",
        help=f"Add {EOT_TOKEN} to the tokenizer as a special token (as upstream).",
    )
    group = parser.add_argument_group("dschat additions")
    group.add_argument(
        "--generation",
        choices=list(MODES),
        default="greedy",
        help="Decoding mode; upstream ran greedy and kept the others commented out. "
        f"{' and '.join(HUB_MODES)} need --trust_remote_code (transformers loads them from the Hub).",
    )
    group.add_argument(
        "--prompts_file",
        type=str,
        default=None,
        help="Your prompts instead of the six: a text file (one per line) or .json/.jsonl records "
        "with a 'prompt' field. A prompt without 'Assistant:' is wrapped as 'Human: <p> Assistant:'.",
    )
    group.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1..."
    )
    group.add_argument(
        "--dtype", default="fp32", choices=list(DTYPES), help="Weights dtype (upstream: fp32)."
    )
    group.add_argument("--seed", type=int, default=42, help="Seed for the sampling modes.")
    group.add_argument(
        "--prompt_template",
        choices=prompts.PROMPT_TEMPLATES,
        default=None,
        help="One prompt format for both models: upstream's 'Human: ... Assistant:' text or the tokenizer's chat "
        "template. Default: the format the fine-tuned model was trained with (dschat_run.json), else upstream's.",
    )
    group.add_argument(
        "--trust_remote_code", action="store_true", help="Allow remote code (models, Hub decoding)."
    )
    return parser.parse_args(argv)


def validate_args(args: argparse.Namespace) -> None:
    """Report every problem with the flags at once."""
    problems = []
    if args.max_new_tokens < 1:
        problems.append(f"--max_new_tokens {args.max_new_tokens} must be at least 1")
    beams = args.num_beams if args.generation in ("beam", "beam_sample", "diverse_beam") else 1
    if args.generation != "sample" and args.num_return_sequences > beams:
        problems.append(
            f"--num_return_sequences {args.num_return_sequences} needs at least as many beams "
            f"(--num_beams {args.num_beams}, --generation {args.generation}); sampling can return any number"
        )
    if args.generation == "diverse_beam" and (
        args.num_beam_groups < 2 or args.num_beams % args.num_beam_groups
    ):
        problems.append("--generation diverse_beam needs --num_beam_groups >= 2 dividing --num_beams")
    if args.generation in HUB_MODES and not args.trust_remote_code:
        problems.append(
            f"--generation {args.generation}: transformers now runs this mode from a Hub repo "
            "(transformers-community/...), which needs network access and --trust_remote_code"
        )
    if args.prompts_file and not Path(args.prompts_file).is_file():
        problems.append(f"--prompts_file {args.prompts_file!r} does not exist")
    if problems:
        raise DschatError("; ".join(problems))


def as_eval_prompt(text: str) -> str:
    """A user's prompt as given when it has the format already, else the question itself (rendered later)."""
    return text.strip()


def render_prompt(text: str, template: str, tokenizer) -> str:
    """The prompt both models get: as given when it is upstream-format text already, else in ``template``."""
    if prompts.ASSISTANT in text:
        return text
    if template == prompts.CHAT_TEMPLATE:
        return prompts.generation_prompt([{"role": "user", "content": text}], template, tokenizer)
    return prompts.upstream_eval_prompt(text)


def _parse_json(path: str, text: str, lineno: int | None = None):
    """``json.loads`` of a whole file (``lineno`` None) or of one line, errors as one DschatError with the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DschatError(
            f"--prompts_file {path} line {lineno or err.lineno}: malformed JSON: {err.msg} (column {err.colno}). "
            "Fix the JSON there, or give a text file with one prompt per line."
        ) from None
    except RecursionError:
        raise too_deep_error(path, lineno or deepest_line(text)) from None


def read_prompts_file(path: str) -> list[str]:
    """Prompts from a text file (one per line) or .json (a list) / .jsonl records with a 'prompt' field."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DschatError(
            f"--prompts_file {path} is not UTF-8 text ({err}). Fix: re-save it as UTF-8."
        ) from None
    if file.suffix == ".json":
        records = _parse_json(path, text)
        records = records if isinstance(records, list) else [records]
    elif file.suffix == ".jsonl":
        lines = text.split("\n")
        records = [_parse_json(path, line, n) for n, line in enumerate(lines, 1) if line.strip()]
    else:
        return [as_eval_prompt(line) for line in text.splitlines() if line.strip()]
    found = []
    for n, record in enumerate(records, 1):
        value = record.get("prompt") if isinstance(record, dict) else record
        if not isinstance(value, str) or not value.strip():
            raise DschatError(f"{path}: record {n} has no non-empty string 'prompt' field")
        found.append(as_eval_prompt(value))
    if not found:
        raise DschatError(f"{path}: no prompts found")
    return found


def default_prompts(language: str) -> list[str]:
    """Upstream's six questions in ``language`` (rendered in the comparison's format by render_prompt)."""
    return list(QUESTIONS[language])


def build_model(path: str, tokenizer, args: argparse.Namespace, device: torch.device):
    """A model built as upstream (create_hf_model: vocab padded to a multiple of 8), in --dtype on --device."""
    model = create_hf_model(
        AutoModelForCausalLM,
        path,
        tokenizer,
        None,
        trust_remote_code=args.trust_remote_code,
        dtype=DTYPES[args.dtype],
    )
    return model.to(device).eval()


def generate_kwargs(args: argparse.Namespace) -> dict:
    """upstream's generate() arguments for the chosen mode."""
    kwargs = dict(num_return_sequences=args.num_return_sequences, max_new_tokens=args.max_new_tokens)
    mode = args.generation
    if mode in ("greedy", "sample"):
        kwargs.update(num_beams=1, do_sample=mode == "sample")
    elif mode in ("beam", "beam_sample"):
        kwargs.update(num_beams=args.num_beams, do_sample=mode == "beam_sample")
    elif mode == "diverse_beam":
        kwargs.update(num_beams=args.num_beams, num_beam_groups=args.num_beam_groups, trust_remote_code=True)
    else:
        kwargs.update(top_k=args.top_k, penalty_alpha=args.penalty_alpha, trust_remote_code=True)
    return kwargs


def generate(model, tokenizer, prompt: str, device: torch.device, kwargs: dict, template: str) -> list[str]:
    """Decoded sequences (prompt included, as upstream printed them)."""
    specials = prompts.adds_special_tokens(template)  # a chat template writes its own BOS
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=specials).to(device)
    try:
        output = model.generate(**inputs, pad_token_id=tokenizer.pad_token_id, **kwargs)
    except OSError as err:  # a Hub decoding repo that cannot be fetched
        raise DschatError(f"cannot load the decoding code for this mode from the Hub: {err}") from err
    return tokenizer.batch_decode(output, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def print_sequences(sequences: list[str]) -> None:
    for sequence in sequences:
        print()
        print(sequence)
        print()


def prompt_eval(args, baseline, finetuned, tokenizer, device, prompt_list: list[str], template: str) -> None:
    """Print each prompt's baseline and fine-tuned answers under upstream's headers, both in ``template``."""
    name, kwargs = MODES[args.generation], generate_kwargs(args)
    for question in prompt_list:
        prompt = render_prompt(question, template, tokenizer)
        print(f"==========Baseline: {name}=========")
        print_sequences(generate(baseline, tokenizer, prompt, device, kwargs, template))
        print(f"==========finetune: {name}=========")
        print_sequences(generate(finetuned, tokenizer, prompt, device, kwargs, template))
        print(PROMPT_END)
        print()
        print()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    validate_args(args)
    setup_logging()
    device = resolve_device(args.device)
    tokenizer = load_hf_tokenizer(
        args.model_name_or_path_baseline,
        fast_tokenizer=True,
        add_special_tokens=EOT_TOKEN if args.add_eot_token else None,
        trust_remote_code=args.trust_remote_code,
    )
    prompt_list = (  # before the models load: a bad prompts file fails in a second
        read_prompts_file(args.prompts_file) if args.prompts_file else default_prompts(args.language)
    )
    baseline = build_model(args.model_name_or_path_baseline, tokenizer, args, device)
    finetuned = build_model(args.model_name_or_path_finetune, tokenizer, args, device)
    template, why = run_dir.comparison_template([args.model_name_or_path_finetune], args.prompt_template)
    logger.info("prompt format for both models: %s (%s)", template, why)
    torch.manual_seed(args.seed)
    prompt_eval(args, baseline, finetuned, tokenizer, device, prompt_list, template)


if __name__ == "__main__":
    sys.exit(run_cli(main))
