"""Inference: load a trained model (full, dschat output or PEFT adapter), batched and streamed generation.

Unlike upstream's chatbot (spec 10.1) the model is built once with ``from_pretrained`` in the requested dtype,
its embedding keeps the saved size (upstream shrank it to ``len(tokenizer)``) and the tokenizer comes from the
model directory. Generation stops at EOS, at a chat template's end-of-turn token and at stop strings
(upstream's format: the next hallucinated ``Human:`` turn), whose text is cut from the answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, TextStreamer

from dschat.errors import DschatError
from dschat.run_dir import read_run_info
from dschat.utils.data import chat_export
from dschat.utils.model.model_utils import TORCH_DTYPES

logger = logging.getLogger(__name__)

DTYPES = TORCH_DTYPES
ADAPTER_CONFIG = "adapter_config.json"
# tokenizer.model_max_length is a huge placeholder (1e30) when a tokenizer does not set it.
MAX_SANE_CONTEXT = 10_000_000


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


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DschatError(f"--device {name}: no CUDA device is visible; use --device cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU, fp16 on GPU (upstream's chatbot ran ``.half()``)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise DschatError(f"--dtype {name!r}: choose one of auto, {', '.join(DTYPES)}")
    if name == "fp16" and device.type == "cpu":
        raise DschatError("--dtype fp16 is for GPUs; on CPU use fp32 (fast) or bf16")
    return DTYPES[name]


def _adapter_base(path: Path) -> str | None:
    """The base model of a PEFT adapter directory, or None for a plain model directory."""
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        return None
    base = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise DschatError(
            f"{config_path} has no base_model_name_or_path; set it to the base model's directory"
        )
    return base


def read_model_run_info(path: str) -> dict:
    """dschat_run.json of a model dir ({} if absent)."""
    return read_run_info(path)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The model's tokenizer, pad = eos where it has none, padded on the left for batched generation."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise DschatError(f"cannot load the tokenizer from {path!r}: {' '.join(str(err).split())}") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _from_pretrained(path: str, dtype: torch.dtype, trust_remote_code: bool):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise DschatError(f"cannot load a causal LM from {path!r}: {' '.join(str(err).split())}") from err


def _apply_adapter(model, adapter_dir: str):
    """Apply a PEFT adapter and merge it into the weights (plain HF model again, no per-step adapter cost)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise DschatError(
            f"{adapter_dir} is a PEFT adapter (it has {ADAPTER_CONFIG}), but peft is not installed: "
            "pip install peft  (or pip install -e .[eval])"
        ) from None
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def load_model(path: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) for inference from a model dir or a PEFT adapter dir; the model in eval mode."""
    directory = Path(path)
    if not directory.is_dir():
        raise DschatError(f"model directory {path!r} does not exist; pass the output dir of a training run")
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    base = _adapter_base(directory)
    has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(path if has_tokenizer or base is None else base, trust_remote_code)
    model = _from_pretrained(base or path, torch_dtype, trust_remote_code)
    if base is not None:
        logger.info("PEFT adapter %s on base model %s", path, base)
        model = _apply_adapter(model, path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    logger.info("loaded %s device=%s dtype=%s", path, target, torch_dtype)
    return model.to(target).eval(), tokenizer


def max_context(model, tokenizer) -> int | None:
    """The longest sequence the model takes: the smaller of its position limit and the tokenizer's, when sane."""
    limits = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    sane = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < MAX_SANE_CONTEXT]
    return min(sane) if sane else None


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
