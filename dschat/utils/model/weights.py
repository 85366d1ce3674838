"""A checkpoint's weights loaded with from_pretrained, every way they can be wrong as one DschatError.

Unreadable files (truncated, not safetensors/zip), and weights that do not belong to the config: transformers
re-initialises tensors the checkpoint lacks with a warning table and raises a multi-line RuntimeError on shape
mismatches; either way the model would not be the checkpoint, so dschat refuses it, naming the first tensors.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import PretrainedConfig, PreTrainedModel

from dschat.errors import DschatError, one_line_message

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
SHOWN_KEYS = 3  # how many mismatching tensors an error names
# torch's load_state_dict line for one tensor: its name, the checkpoint's shape, the model's shape.
TORCH_SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
    r"the shape in current model is torch\.Size\((\[.*?\])\)"
)
FIX = "Fix: restore the config.json saved with these weights, or point at the directory they belong to"


def _unreadable_weight_files(directory: Path) -> list[str]:
    """Weight files whose header/container cannot even be opened (cheap checks, no tensor reads)."""
    bad = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        if path.suffix == ".bin":
            if not zipfile.is_zipfile(path):
                bad.append(str(path))
            continue
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError:
            bad.append(str(path))
    return bad


class _HideLoadReport(logging.Filter):
    """Drops transformers' multi-line LOAD REPORT table; load_pretrained reports what it means on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def _in_model_order(model: torch.nn.Module, names) -> list:
    """Tensor names (or (name, saved shape, model shape) tuples) in the order of the model's state dict."""
    order = {name: i for i, name in enumerate(model.state_dict())}

    def position(item) -> tuple[int, str]:
        name = item[0] if isinstance(item, tuple) else item
        return order.get(name, len(order)), name

    return sorted(names, key=position)


def weights_problem(source: str, model: torch.nn.Module, info: dict) -> str | None:
    """Why the loaded weights are not (all) the checkpoint's: shapes that differ from config.json, tensors the
    checkpoint lacks (transformers would initialise them randomly); None when every tensor was loaded."""
    mismatched = _in_model_order(model, info["mismatched_keys"])
    if mismatched:
        shown = ", ".join(
            f"{key} is {list(saved)} in the weights but {list(wanted)} by config.json"
            for key, saved, wanted in mismatched[:SHOWN_KEYS]
        )
        return f"model {source!r}: {len(mismatched)} weight tensor(s) do not match its config.json ({shown}). {FIX}"
    missing = _in_model_order(model, info["missing_keys"])
    if missing:
        unexpected = sorted(info["unexpected_keys"])
        found = (
            f"; the weights hold other tensors instead ({', '.join(unexpected[:SHOWN_KEYS])})"
            if unexpected
            else ""
        )
        return (
            f"model {source!r}: its weights lack {len(missing)} tensor(s) the config.json's model needs "
            f"({', '.join(missing[:SHOWN_KEYS])}){found}, so they would be random. {FIX}"
        )
    return None


def _size_mismatch_error(source: str, err: RuntimeError) -> DschatError:
    """The one-line form of torch's multi-line "size mismatch for ..." load error (ZeRO-3's loading path)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip().startswith("size mismatch")]
    shown = []
    for line in lines[:SHOWN_KEYS]:
        match = TORCH_SIZE_MISMATCH.match(line)
        shown.append(
            f"{match[1]} is {match[2]} in the weights but {match[3]} by config.json" if match else line
        )
    return DschatError(
        f"model {source!r}: {len(lines)} weight tensor(s) do not match its config.json ({', '.join(shown)}). {FIX}"
    )


def _from_pretrained_checked(model_class: Any, source: str, **kwargs: Any) -> PreTrainedModel:
    """from_pretrained that refuses weights which do not fit the config instead of re-initialising them."""
    hide = _HideLoadReport()
    modeling_logger = logging.getLogger("transformers.modeling_utils")
    modeling_logger.addFilter(hide)
    try:
        # ignore_mismatched_sizes: get the mismatches back as loading info (checked below), not a RuntimeError
        # after a multi-line table.
        model, info = model_class.from_pretrained(
            source, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    except RuntimeError as err:
        if "size mismatch" in str(err):
            raise _size_mismatch_error(source, err) from err
        raise
    finally:
        modeling_logger.removeFilter(hide)
    if (problem := weights_problem(source, model, info)) is not None:
        raise DschatError(problem)
    if info["unexpected_keys"]:
        logger.warning(
            "model %s: ignoring %d tensor(s) of its weights that the model has no place for (%s)",
            source,
            len(info["unexpected_keys"]),
            ", ".join(sorted(info["unexpected_keys"])[:SHOWN_KEYS]),
        )
    return model


def load_pretrained(
    model_class: Any,
    source: str,
    dtype: torch.dtype,
    trust_remote_code: bool,
    config: PretrainedConfig | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """model_class.from_pretrained, with unreadable, missing or config-mismatched weights as one DschatError."""
    extra: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if config is not None:
        extra["config"] = config
    try:
        return _from_pretrained_checked(
            model_class, source, dtype=dtype, trust_remote_code=trust_remote_code, **extra
        )
    except (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError) as err:
        corrupt = _unreadable_weight_files(Path(source)) if Path(source).is_dir() else []
        if corrupt:
            raise DschatError(
                f"corrupt or truncated weight file(s) {', '.join(corrupt)}: {one_line_message(err)}. "
                "Re-save or re-download the checkpoint"
            ) from err
        if isinstance(err, OSError):
            raise DschatError(
                f"cannot load the model weights from {source!r}: {one_line_message(err)}"
            ) from err
        raise
