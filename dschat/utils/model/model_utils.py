"""Tokenizer loading, ZeRO-3-aware model creation and the fp32-loss wrapper (upstream step 1, spec 4.1-4.4)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import HfDeepSpeedConfig

from dschat.config import ModelConfig
from dschat.errors import DschatError
from dschat.utils.model.chunked_loss import chunked_loss_unsupported, use_chunked_loss
from dschat.utils.model.lean_activations import use_lean_activations
from dschat.utils.model.patches import DROPOUT_KEYS, apply_liger_kernel, causal_lm_model_to_fp32_loss
from dschat.utils.model.weights import load_pretrained

logger = logging.getLogger(__name__)

# Upstream's model-family test: a plain substring of the name or path the user gave.
LLAMA_MARKER = "llama"
LLAMA_PAD_TOKEN = "[PAD]"
# Upstream pads the vocabulary (embedding rows) to a multiple of this.
VOCAB_MULTIPLE = 8
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # names: config.DTYPES
# config.json keys that size a learned position table, by family (OPT: max_position_embeddings, GPT-2:
# n_positions). OPT's table has 2 extra rows for its offset; only max_position_embeddings of them are positions.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# Keys of rotary position configs: positions are computed, so a longer sequence runs (beyond the trained length).
ROTARY_KEYS = ("rope_theta", "rope_parameters", "rope_scaling", "rotary_dim", "rotary_pct", "rotary_emb_base")


def model_source_problem(name_or_path: str, what: str = "model", need_config: bool = False) -> str | None:
    """Why ``name_or_path`` is neither a local model directory nor a hub id (``name`` or ``org/name``), or None.

    The one rule for model paths: main.py's flag check and every loader use it.
    """
    path = Path(name_or_path)
    if path.is_dir():
        if need_config and not (path / "config.json").is_file():
            return (
                f"{what} directory {name_or_path!r} has no config.json; pass a directory saved with "
                "model.save_pretrained(dir) or a hub id"
            )
        return None
    if path.exists():
        return (
            f"{what} path {name_or_path!r} is a file; pass the model directory (with config.json) or a hub id"
        )
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return (
            f"{what} directory {name_or_path!r} does not exist (and is not a Hugging Face hub id); "
            "check --model_name_or_path"
        )
    return None


def position_limit(name_or_path: str) -> tuple[str, int] | None:
    """(config key, size) of a local model dir's learned position table: no sequence may be longer (an
    IndexError inside the forward pass). None without one: no such key, rotary positions, or no local config."""
    path = Path(name_or_path) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # no local config (a hub id) or an unreadable one, which loading reports
    if not isinstance(config, dict) or any(key in config for key in ROTARY_KEYS):
        return None
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def _is_local_source(name_or_path: str, what: str, need_config: bool = False) -> bool:
    """True for an existing local directory, False for a hub id; DschatError for anything else."""
    problem = model_source_problem(name_or_path, what, need_config)
    if problem is not None:
        raise DschatError(problem)
    return Path(name_or_path).is_dir()


def _one_line(err: Exception) -> str:
    """An exception's message on one line (HF's span several)."""
    return " ".join(str(err).split())


def _load_failure(what: str, name_or_path: str, is_local: bool, err: Exception) -> DschatError:
    """The DschatError for a failed tokenizer/config load, with the fix for local dirs and hub ids."""
    cause = _one_line(err)
    if is_local:
        return DschatError(f"cannot load the {what} from directory {name_or_path!r}: {cause}")
    return DschatError(
        f"cannot load the {what} of hub model {name_or_path!r}; without network access, download it first "
        f"(`hf download {name_or_path}`) and pass the local directory (no local directory of that name exists). "
        f"Cause: {cause}"
    )


def load_hf_tokenizer(
    model_name_or_path: str,
    fast_tokenizer: bool = True,
    add_special_tokens: str | Sequence[str] | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a local dir or hub id with upstream's pad rules and right padding."""
    source = str(model_name_or_path)
    is_local = _is_local_source(source, "tokenizer")
    if is_local and not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        raise DschatError(
            f"tokenizer directory {source!r} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer there with tokenizer.save_pretrained(dir) or pass the base model's directory"
        )
    # Unlike upstream we load from the directory given, not from config.json's `_name_or_path`, so a saved
    # step-1 output reloads its own vocabulary offline. AutoTokenizer (never the slow LlamaTokenizer, which in
    # transformers 5 breaks byte-level vocabularies); transformers 5 ignores use_fast and is always fast.
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, use_fast=fast_tokenizer, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _load_failure("tokenizer", source, is_local, err) from err

    if LLAMA_MARKER in source:
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": LLAMA_PAD_TOKEN})  # vocab grows by one
    else:
        # Upstream quirk kept: eos doubles as pad even where a real pad token exists (OPT's <pad>).
        tokenizer.pad_token = tokenizer.eos_token
    # Upstream leaves a llama tokenizer that already has a pad token at its class default; we always pad right.
    tokenizer.padding_side = "right"

    if add_special_tokens is not None:
        extra = [add_special_tokens] if isinstance(add_special_tokens, str) else list(add_special_tokens)
        # transformers 5 name for upstream's "additional_special_tokens".
        tokenizer.add_special_tokens({"extra_special_tokens": extra})
    logger.info(
        "tokenizer=%s len=%d pad=%r pad_id=%s eos_id=%s",
        source,
        len(tokenizer),
        tokenizer.pad_token,
        tokenizer.pad_token_id,
        tokenizer.eos_token_id,
    )
    return tokenizer


def _override_dropout(config: PretrainedConfig, dropout: float | None) -> None:
    """Set upstream's four dropout keys, where the config has them, to ``dropout``."""
    if dropout is None:
        return
    for key in DROPOUT_KEYS:
        if hasattr(config, key):
            logger.info("Setting model_config.%s to %s", key, dropout)
            setattr(config, key, dropout)


def model_config_only(
    model_name_or_path: str, dropout: float | None = None, trust_remote_code: bool = False
) -> PretrainedConfig:
    """The model's config (dropout overridden as create_hf_model would), without loading weights."""
    source = str(model_name_or_path)
    is_local = _is_local_source(source, "model", need_config=True)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise _load_failure("config", source, is_local, err) from err
    _override_dropout(config, dropout)
    return config


def _partition_new_parameters(model: torch.nn.Module) -> None:
    """Partition parameters HF created outside zero.Init (the resized embeddings) as the engine would."""
    zero_params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    plain_params = [p for p in model.parameters() if not hasattr(p, "ds_id")]
    if zero_params and plain_params:
        # Same call DeepSpeed's ZeRO-3 engine makes at initialize(): rank 0's values are broadcast, then split.
        zero_params[0].convert_to_zero_parameters(param_list=plain_params)


def create_hf_model(
    model_class: Any,
    model_name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    ds_config: dict | None = None,
    rlhf_training: bool = False,
    dropout: float | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Build the model as upstream: config (+dropout), ZeRO-3 aware load, eos/pad ids, vocab padded to x8."""
    source = str(model_name_or_path)
    config = model_config_only(source, dropout=dropout, trust_remote_code=trust_remote_code)
    zero_stage = ((ds_config or {}).get("zero_optimization") or {}).get("stage")
    # HF keeps only a weak reference to this object and builds models under deepspeed.zero.Init (parameters
    # partitioned as they are created) while it is alive: hold it through from_pretrained AND the resize.
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero_stage == 3 else None
    if rlhf_training:
        model = model_class.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        # Upstream passed no dtype (fp32 in its transformers); transformers 5 would default to the checkpoint's.
        model = load_pretrained(model_class, source, dtype, trust_remote_code, config, attn_implementation)

    model.config.end_token_id = tokenizer.eos_token_id
    # The MODEL's eos id (upstream): for Llama this differs from the tokenizer's [PAD] id; labels are mask-based.
    model.config.pad_token_id = model.config.eos_token_id
    # Same call as upstream so the new rows (mean-resizing draws from the global RNG) match for a seed.
    model.resize_token_embeddings(int(VOCAB_MULTIPLE * math.ceil(len(tokenizer) / float(VOCAB_MULTIPLE))))
    if hf_ds_config is not None:
        _partition_new_parameters(model)
    # From here on HF no longer sees ZeRO-3, exactly as upstream where the object died with the function.
    del hf_ds_config
    logger.info(
        "model=%s vocab_size=%d dtype=%s zero_stage=%s", source, model.config.vocab_size, dtype, zero_stage
    )
    return model


def build_model(model_class: Any, model: ModelConfig, tokenizer: PreTrainedTokenizerBase, ds_config: dict):
    """main.py's model step: upstream's create_hf_model, then the lean MLP, Liger kernels, the chunked loss or the
    fp32 loss."""
    built = create_hf_model(
        model_class,
        model.model_name_or_path,
        tokenizer,
        ds_config,
        dropout=model.dropout,
        trust_remote_code=model.trust_remote_code,
        attn_implementation=model.attn_implementation,
    )
    if model.activation_memory == "lean" and not model.use_liger_kernel:  # Liger brings its own SwiGLU kernel
        use_lean_activations(built)
    if model.use_liger_kernel:
        apply_liger_kernel(built)  # its fused linear cross-entropy is the chunked loss's GPU kernel
    elif model.lm_loss == "chunked":
        unsupported = chunked_loss_unsupported(built)
        if unsupported is None:
            use_chunked_loss(built)
            return built
        logger.info("lm_loss=full (%s)", unsupported)
    if model.compute_fp32_loss:
        causal_lm_model_to_fp32_loss(built)
    return built


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The HF module inside a DeepSpeed engine (or the module itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model
