"""Export dschat's LoRA matrices as a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

Our layer computes ``x·Wᵀ + (x·R·L)·(alpha / r)`` with R = ``lora_right_weight`` [in, r] and
L = ``lora_left_weight`` [r, out]. PEFT computes ``x·Wᵀ + B(A(x))·(lora_alpha / r)`` with ``lora_A.weight``
[r, in] and ``lora_B.weight`` [out, r], so A = Rᵀ, B = Lᵀ and the two scalings are the same number.
The adapter must be read BEFORE fusing (fusing folds the update into W). Pure torch: the ZeRO-3 gather is
passed in by the caller, as for ``lora.convert_lora_to_linear_layer``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from dschat.run_dir import ADAPTER_CONFIG_NAME, LORA_ADAPTER_DIR
from dschat.utils import atomic
from dschat.utils.log import global_rank
from dschat.utils.model.model_utils import unwrap_model
from dschat.utils.module.lora import GatherFactory, LinearLayer_LoRA, is_lora_parameter

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# PeftModel wraps the HF model as base_model (LoraModel) -> model (the HF model): saved keys carry this prefix.
PEFT_KEY_PREFIX = "base_model.model."
# How many names of trained non-LoRA parameters the warning lists.
NAME_SAMPLE_SIZE = 5


def named_lora_modules(model: nn.Module) -> list[tuple[str, LinearLayer_LoRA]]:
    """(qualified name, layer) for every LoRA layer, names relative to the HF model."""
    return [
        (name, module)
        for name, module in unwrap_model(model).named_modules()
        if isinstance(module, LinearLayer_LoRA)
    ]


def peft_adapter_tensors(
    model: nn.Module, gather: GatherFactory | None = None
) -> dict[str, torch.Tensor] | None:
    """PEFT-named CPU copies of the unfused LoRA matrices on rank 0, None on other ranks.

    Every rank must call it under ZeRO-3 (``gather`` is collective). Raises if a layer is already fused.
    """
    is_writer = global_rank() == 0
    tensors: dict[str, torch.Tensor] = {}
    for name, module in named_lora_modules(model):
        if module.fused:
            raise RuntimeError(
                f"LoRA layer {name} is already fused into its base weight: export the adapter before fusing"
            )
        params = [module.lora_right_weight, module.lora_left_weight]
        with gather(params) if gather is not None else contextlib.nullcontext():
            if is_writer:
                # .t() is a view: contiguous() makes the copy safetensors needs.
                right = module.lora_right_weight.detach().t().contiguous().cpu()  # [r, in]
                left = module.lora_left_weight.detach().t().contiguous().cpu()  # [out, r]
                tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = right
                tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = left
    return tensors if is_writer else None


def peft_adapter_config(
    target_modules: list[str],
    base_model_name_or_path: str,
    lora_alpha: float,
    lora_dim: int,
    lora_dropout: float,
) -> dict:
    """PEFT's LoraConfig fields for our LoRA: plain LoRA (no rsLoRA, no DoRA), biases untouched."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": lora_dim,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": target_modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }


def _check_hyperparameters(
    modules: list[tuple[str, LinearLayer_LoRA]], lora_alpha: float, lora_dim: int
) -> None:
    """The adapter's r and alpha must describe the layers, or PEFT would scale the update differently."""
    for name, module in modules:
        if module.lora_dim != lora_dim or not math.isclose(module.lora_scaling, lora_alpha / lora_dim):
            raise ValueError(
                f"LoRA layer {name} has lora_dim={module.lora_dim} scaling={module.lora_scaling:g}, "
                f"but the export was asked for r={lora_dim} alpha={lora_alpha:g} (scaling {lora_alpha / lora_dim:g})"
            )


def trained_non_lora_parameters(model: nn.Module) -> list[str]:
    """Names of parameters outside the LoRA matrices that are trainable (the adapter does not hold them)."""
    return [
        name
        for name, param in unwrap_model(model).named_parameters()
        if param.requires_grad and not is_lora_parameter(name)
    ]


def save_peft_adapter(
    model: nn.Module,
    output_dir: str | os.PathLike,
    base_model_name_or_path: str,
    lora_alpha: float,
    lora_dim: int,
    lora_dropout: float,
    gather: GatherFactory | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> Path | None:
    """Write ``<output_dir>/lora_adapter/`` in PEFT's LoRA format; call before fusing, on every rank.

    ``write_extra(temp_dir)`` adds files (the tokenizer with its chat template) before the dir is swapped in.

    ``peft.PeftModel.from_pretrained(base, <output_dir>/lora_adapter)`` then computes what the unfused model
    did, provided ``base`` has the weights training started from (same vocabulary size after dschat's resize).
    Rank 0 writes into a temp dir and renames it into place; returns the adapter dir there, None elsewhere.
    """
    modules = named_lora_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA layers: train with --lora_dim > 0 to export an adapter")
    _check_hyperparameters(modules, lora_alpha, lora_dim)
    tensors = peft_adapter_tensors(model, gather)
    if tensors is None:
        return None
    trained = trained_non_lora_parameters(model)
    if trained:
        logger.warning(
            "%d non-LoRA parameters were trained too (e.g. %s); the adapter holds only the LoRA matrices, "
            "the full saved model holds everything (train with --only_optimize_lora for an adapter-only run)",
            len(trained),
            ", ".join(trained[:NAME_SAMPLE_SIZE]),
        )
    config = peft_adapter_config(
        [name for name, _ in modules], base_model_name_or_path, lora_alpha, lora_dim, lora_dropout
    )
    adapter_dir = _write_atomically(Path(output_dir), config, tensors, write_extra)
    logger.info(
        "saved PEFT LoRA adapter dir=%s layers=%d r=%d alpha=%g",
        adapter_dir,
        len(modules),
        lora_dim,
        lora_alpha,
    )
    return adapter_dir


def _write_atomically(
    output_dir: Path,
    config: dict,
    tensors: dict[str, torch.Tensor],
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write into a temp dir beside the target, then swap it in, so a reader never sees half an adapter."""
    target = output_dir / LORA_ADAPTER_DIR
    with atomic.staging_dir(target) as temp_dir:
        save_file(tensors, temp_dir / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
        (temp_dir / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if write_extra is not None:
            write_extra(temp_dir)
    return target
