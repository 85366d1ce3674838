"""Load a trained model for inference: a full model dir, a dschat output or a PEFT adapter dir.

Unlike upstream's chatbot (spec 10.1) the model is built once with ``from_pretrained`` in the requested dtype,
its embedding keeps the saved size (upstream shrank it to ``len(tokenizer)``) and the tokenizer comes from the
model directory (a PEFT adapter dir: its own tokenizer when it has one, else the base model's).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dschat.errors import DschatError
from dschat.run_dir import ADAPTER_CONFIG_NAME
from dschat.utils.model.model_utils import TORCH_DTYPES
from dschat.utils.model.weights import load_pretrained

logger = logging.getLogger(__name__)

DTYPES = TORCH_DTYPES
# tokenizer.model_max_length is a huge placeholder (1e30) when a tokenizer does not set it.
MAX_SANE_CONTEXT = 10_000_000


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
    config_path = path / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        return None
    try:
        adapter = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DschatError(
            f"{config_path} is not readable JSON ({' '.join(str(err).split())}); re-save the adapter with "
            "peft's save_pretrained"
        ) from None
    base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
    if not base:
        raise DschatError(
            f"{config_path} has no base_model_name_or_path; set it to the base model's directory"
        )
    return base


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
    """The causal LM of ``path``; weights that are unreadable or do not fit its config.json are a DschatError."""
    try:
        return load_pretrained(AutoModelForCausalLM, path, dtype, trust_remote_code)
    except ValueError as err:
        raise DschatError(f"cannot load a causal LM from {path!r}: {' '.join(str(err).split())}") from err


def _apply_adapter(model, adapter_dir: str):
    """Apply a PEFT adapter and merge it into the weights (plain HF model again, no per-step adapter cost)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise DschatError(
            f"{adapter_dir} is a PEFT adapter (it has {ADAPTER_CONFIG_NAME}), but peft is not installed: "
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
