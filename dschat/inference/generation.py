"""Inference: decoding settings and their flags, batched and streamed generation (models load in ``loading``).

Generation stops at EOS, at a chat template's end-of-turn token and at stop strings (upstream's format: the
next hallucinated ``Human:`` turn), whose text is cut from the answer.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, TextStreamer

from dschat.config import DTYPES
from dschat.utils.data import chat_export

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding flags; temperature 0 means greedy (deterministic)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0

    def to_config(
        self, eos_token_ids: Sequence[int], pad_token_id: int | None, stop_strings: Sequence[str] = ()
    ) -> GenerationConfig:
        """A complete GenerationConfig, so a checkpoint's own sampling defaults cannot switch greedy off."""
        sampling = (
            dict(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
            if self.temperature > 0
            else dict(do_sample=False)
        )
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            repetition_penalty=self.repetition_penalty,
            eos_token_id=list(eos_token_ids),
            pad_token_id=pad_token_id,
            stop_strings=list(stop_strings) or None,
            **sampling,
        )


def add_generation_args(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    """Decoding and placement flags shared by the chat and evaluation CLIs (all dschat additions)."""
    group = parser.add_argument_group("generation and device (dschat)")
    group.add_argument(
        "--temperature", type=float, default=0.0, help="0 = greedy, deterministic (default); > 0 samples."
    )
    group.add_argument(
        "--top_p", type=float, default=1.0, help="Nucleus sampling mass (with --temperature > 0)."
    )
    group.add_argument("--top_k", type=int, default=50, help="Sample among the k likeliest tokens; 0 = off.")
    group.add_argument(
        "--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeats (1.0 = off)."
    )
    if seed:
        group.add_argument(
            "--seed", type=int, default=42, help="Seed for sampling (upstream's chatbot used 42)."
        )
    group.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1..."
    )
    group.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", *DTYPES),
        help="Weights dtype; auto = fp32 on CPU, fp16 on GPU (upstream's chatbot used fp16).",
    )
    group.add_argument(
        "--trust_remote_code", action="store_true", help="Allow model code from the model dir."
    )


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """GenerationSettings from the flags of add_generation_args (and --max_new_tokens)."""
    return GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
    )


def validate_generation_args(args: argparse.Namespace) -> list[str]:
    """Problems with the generation flags, for the caller's single DschatError."""
    problems = []
    if args.max_new_tokens < 1:
        problems.append(f"--max_new_tokens {args.max_new_tokens} must be at least 1")
    if args.temperature < 0:
        problems.append(f"--temperature {args.temperature} must be >= 0 (0 = greedy)")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p {args.top_p} must be in (0, 1]")
    if args.top_k < 0:
        problems.append(f"--top_k {args.top_k} must be >= 0 (0 = off)")
    if args.repetition_penalty <= 0:
        problems.append(f"--repetition_penalty {args.repetition_penalty} must be > 0")
    return problems


def stop_token_ids(model, tokenizer, prompt_template: str) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config, plus a chat template's end-of-turn token."""
    return chat_export.end_of_turn_ids(tokenizer, prompt_template, model.generation_config.eos_token_id)


def cut_at_markers(text: str, markers: Sequence[str]) -> str:
    """The text before the first stop marker (upstream cuts the answer at the next ``Human:`` turn)."""
    cut = min((i for i in (text.find(m) for m in markers) if i >= 0), default=len(text))
    return text[:cut]


@dataclass
class Generated:
    """Answers of one batch, the tokens generated per row (padding excluded) and the wall time."""

    texts: list[str]
    new_tokens: list[int]
    seconds: float


def _count_new_tokens(rows: torch.Tensor, stop_ids: Sequence[int]) -> list[int]:
    """Generated tokens per row up to and including the first stop token (later ones are padding)."""
    is_stop = torch.isin(rows, torch.tensor(list(stop_ids), device=rows.device))
    first = torch.where(is_stop.any(dim=1), is_stop.int().argmax(dim=1) + 1, rows.size(1))
    return first.tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of prompts grouped into batches of equal token length (at most ``batch_size`` each).

    A left-padded row is computed through the attention mask, which rounds its floats differently from the
    same prompt alone (about 1e-5 in the logits): enough to flip a near-tie between two tokens, after which a
    greedy answer goes another way. Rows of one length need no padding and match one-at-a-time generation
    exactly, so greedy answers do not depend on the batch size.
    """
    groups: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(length, []).append(index)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompt_texts: Sequence[str],
    settings: GenerationSettings,
    stop_ids: Sequence[int],
    add_special_tokens: bool = True,
    stop_strings: Sequence[str] = (),
    max_prompt_tokens: int | None = None,
) -> Generated:
    """Answer a batch of prompts (left padded, so every row continues right after its prompt).

    Prompts longer than ``max_prompt_tokens`` lose their beginning (the question at the end is kept).
    """
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    truncation = dict(truncation=True, max_length=max_prompt_tokens) if max_prompt_tokens else {}
    batch = tokenizer(
        list(prompt_texts),
        return_tensors="pt",
        padding=True,
        add_special_tokens=add_special_tokens,
        **truncation,
    ).to(model.device)
    config = settings.to_config(stop_ids, tokenizer.pad_token_id, stop_strings)
    _sync(model.device)
    start = time.perf_counter()
    # The tokenizer lets generate match stop strings against decoded text.
    output = model.generate(**batch, generation_config=config, tokenizer=tokenizer)
    _sync(model.device)
    seconds = time.perf_counter() - start
    new = output[:, batch["input_ids"].shape[1] :]
    texts = tokenizer.batch_decode(new, skip_special_tokens=True)
    texts = [cut_at_markers(text, stop_strings).strip() for text in texts]
    return Generated(texts, _count_new_tokens(new, stop_ids), seconds)


class HoldBackStreamer(TextStreamer):
    """Streams answer text but never a stop marker: text that might begin one is held until it cannot."""

    def __init__(self, tokenizer, write: Callable[[str], None], markers: Sequence[str] = ()):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.write, self.markers = write, tuple(markers)
        self.text, self.shown, self.stopped = "", 0, False

    def _held(self) -> int:
        """Length of the longest end of the text that is the start of a marker."""
        return max(
            (n for m in self.markers for n in range(1, len(m)) if self.text.endswith(m[:n])), default=0
        )

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if self.stopped:
            return
        self.text += text
        if self.shown == 0:
            self.text = self.text.lstrip()  # the answer's leading space belongs to the format
        cut = cut_at_markers(self.text, self.markers)
        self.stopped = len(cut) < len(self.text)
        self.text = cut
        safe = len(self.text) if self.stopped or stream_end else len(self.text) - self._held()
        if safe > self.shown:
            self.write(self.text[self.shown : safe])
            self.shown = safe


@torch.no_grad()
def generate_streaming(
    model,
    tokenizer,
    input_ids: list[int],
    settings: GenerationSettings,
    stop_ids: Sequence[int],
    write: Callable[[str], None],
    stop_strings: Sequence[str] = (),
) -> str:
    """Answer one prompt (token ids), writing the text as it is generated; returns the whole answer."""
    streamer = HoldBackStreamer(tokenizer, write, stop_strings)
    ids = torch.tensor([input_ids], device=model.device)
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        generation_config=settings.to_config(stop_ids, tokenizer.pad_token_id, stop_strings),
        streamer=streamer,
        tokenizer=tokenizer,
    )
    return streamer.text.strip()
