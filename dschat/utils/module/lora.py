"""LoRA as upstream step 1 does it: wrap linear layers with a low-rank update, freeze, fuse. Pure torch.

The ZeRO-3 gather needed around a fuse is passed in by the caller (``gather=``), so this module never
imports DeepSpeed.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dschat.config import LoraConfig
from dschat.errors import DschatError

logger = logging.getLogger(__name__)

# Parameter names of the LoRA matrices; optimizer grouping and the save filter match these substrings.
LORA_RIGHT = "lora_right_weight"
LORA_LEFT = "lora_left_weight"
LORA_PARAM_NAMES = (LORA_RIGHT, LORA_LEFT)
# How many linear-layer names a "scope matches nothing" error shows.
NAME_SAMPLE_SIZE = 10
# Kaiming-uniform slope: PyTorch's default nn.Linear init, which upstream uses for the right matrix.
KAIMING_A = math.sqrt(5)

# Builds a context manager that makes the full values of the given parameters available (a ZeRO-3 gather).
GatherFactory = Callable[[list[nn.Parameter]], AbstractContextManager]


class LinearLayer_LoRA(nn.Module):  # upstream's class name, kept so users recognise it
    """A linear layer plus a low-rank update: y = x·Wᵀ + b + (dropout(x)·R·L)·(alpha / r).

    R = ``lora_right_weight`` [in, r] (down-projection, Kaiming-uniform), L = ``lora_left_weight`` [r, out]
    (up-projection, zeros), so the layer starts as exactly the wrapped linear. ``weight`` and ``bias`` are the
    wrapped layer's own Parameter objects, so their state-dict keys do not change. Fusing folds
    (alpha / r)·Lᵀ·Rᵀ into W, after which the forward is the plain linear.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        lora_dim: int,
        lora_scaling: float = 1.0,
        lora_dropout: float = 0.0,
        bias: nn.Parameter | None = None,
    ) -> None:
        super().__init__()
        if lora_dim <= 0:
            raise ValueError(f"LoRA needs a rank lora_dim > 0, got {lora_dim}")
        self.weight = weight
        self.bias = bias
        # Under ZeRO-3 the local tensor is an empty placeholder; ds_shape is the full [out, in].
        out_features, in_features = getattr(weight, "ds_shape", weight.shape)
        self.in_features, self.out_features, self.lora_dim = int(in_features), int(out_features), lora_dim
        # Built on the default device and dtype, then moved, as upstream does: seeded runs draw the same numbers
        # from the same (CPU) generator whatever the weight's device or precision.
        right = torch.empty(self.in_features, lora_dim)
        nn.init.kaiming_uniform_(right, a=KAIMING_A)  # fan_in = r for this [in, r] tensor, as upstream
        left = torch.zeros(lora_dim, self.out_features)
        self.lora_right_weight = nn.Parameter(right.to(device=weight.device, dtype=weight.dtype))
        self.lora_left_weight = nn.Parameter(left.to(device=weight.device, dtype=weight.dtype))
        self.lora_scaling = lora_scaling / lora_dim
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.fused = False
        # Upstream freezes the base weight of every converted layer, even without --only_optimize_lora.
        self.weight.requires_grad = False

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, lora_dim={self.lora_dim}, "
            f"lora_scaling={self.lora_scaling:g}, bias={self.bias is not None}, fused={self.fused}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The linear output, plus the scaled low-rank update unless it is already fused into W."""
        out = F.linear(x, self.weight, self.bias)
        if self.fused:
            return out
        return (
            out + (self.lora_dropout(x) @ self.lora_right_weight @ self.lora_left_weight) * self.lora_scaling
        )

    def lora_delta(self) -> torch.Tensor:
        """The update (alpha / r)·Lᵀ·Rᵀ in W's [out, in] layout."""
        return self.lora_scaling * (self.lora_left_weight.t() @ self.lora_right_weight.t())

    def fuse_lora_weight(self) -> None:
        """W += (alpha / r)·Lᵀ·Rᵀ, once; afterwards the forward is the plain linear."""
        if not self.fused:
            with torch.no_grad():
                self.weight.add_(self.lora_delta())
            self.fused = True

    def unfuse_lora_weight(self) -> None:
        """Undo fuse_lora_weight (W -= the same update)."""
        if self.fused:
            with torch.no_grad():
                self.weight.sub_(self.lora_delta())
            self.fused = False


def is_lora_parameter(name: str) -> bool:
    """Whether a parameter or state-dict name is one of the LoRA matrices (the one test for it)."""
    return name.rpartition(".")[2] in LORA_PARAM_NAMES


def _parse_scopes(part_module_name: str) -> list[str]:
    """One substring, or several separated by commas (dschat); upstream's single string is kept as-is."""
    scopes = [scope.strip() for scope in part_module_name.split(",") if scope.strip()]
    return scopes or [part_module_name]


def convert_linear_layer_to_lora(
    model: nn.Module,
    part_module_name: str,
    lora_dim: int = 0,
    lora_scaling: float = 1.0,
    lora_dropout: float = 0.0,
) -> list[str]:
    """Replace every nn.Linear whose qualified name contains a scope substring by a LinearLayer_LoRA.

    Layers are converted in ``model.named_modules()`` order, as upstream, so seeded runs draw the same random
    right matrices. Returns the converted names. ``lora_scaling`` is upstream's alpha (scaling = alpha / r).
    """
    if lora_dim <= 0:
        raise ValueError(f"LoRA needs a rank lora_dim > 0, got {lora_dim}")
    scopes = _parse_scopes(part_module_name)
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    names = [name for name in linear_names if any(scope in name for scope in scopes)]
    if not names:
        raise DschatError(_no_match_message(model, part_module_name, linear_names))
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        setattr(
            parent,
            child_name,
            LinearLayer_LoRA(linear.weight, lora_dim, lora_scaling, lora_dropout, linear.bias),
        )
    logger.info(
        "lora_layers=%d lora_dim=%d lora_alpha=%g lora_scaling=%g lora_dropout=%g scope=%r",
        len(names),
        lora_dim,
        lora_scaling,
        lora_scaling / lora_dim,
        lora_dropout,
        part_module_name,
    )
    return names


def _no_match_message(model: nn.Module, part_module_name: str, linear_names: Sequence[str]) -> str:
    """What went wrong, which linear layers exist, and how to pick a scope that matches them."""
    sample = ", ".join(linear_names[:NAME_SAMPLE_SIZE]) or "(none)"
    more = f" ... ({len(linear_names)} in all)" if len(linear_names) > NAME_SAMPLE_SIZE else ""
    return (
        f"--lora_module_name {part_module_name!r} matches no nn.Linear layer of {type(model).__name__}, so LoRA "
        f"would change nothing. Its linear layers are: {sample}{more}. Pass a substring of these names "
        "(several separated by commas) with --lora_module_name, e.g. 'layers.' for Llama-style models or "
        "'decoder.layers.' for OPT."
    )


def only_optimize_lora_parameters(model: nn.Module, force_optimize_params: Iterable[str] = ()) -> nn.Module:
    """Train only the LoRA matrices (and parameters named exactly in ``force_optimize_params``); freeze the rest."""
    forced = set(force_optimize_params)
    for name, param in model.named_parameters():
        param.requires_grad = is_lora_parameter(name) or name in forced
    return model


def make_model_gradient_checkpointing_compatible(model: nn.Module) -> nn.Module:
    """Make the input embeddings' output require grad, so reentrant checkpointing passes gradients to LoRA."""
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    elif hasattr(model, "get_input_embeddings"):
        model.get_input_embeddings().register_forward_hook(_output_requires_grad)
    return model


def _output_requires_grad(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
    output.requires_grad_(True)


def lora_modules(model: nn.Module) -> list[LinearLayer_LoRA]:
    """All LoRA-wrapped linear layers of ``model``."""
    return [module for module in model.modules() if isinstance(module, LinearLayer_LoRA)]


def convert_lora_to_linear_layer(model: nn.Module, gather: GatherFactory | None = None) -> nn.Module:
    """Fuse every LoRA update into its base weight (before saving a plain dense model).

    Under ZeRO-3 pass e.g. ``gather=lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=0)``: the
    fuse must see the full tensors, and rank 0's result is what gets re-partitioned.
    """
    for module in lora_modules(model):
        params = [module.weight, module.bias, module.lora_left_weight, module.lora_right_weight]
        params = [param for param in params if param is not None]
        with gather(params) if gather is not None else contextlib.nullcontext():
            module.fuse_lora_weight()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the LoRA matrices of the state dict (an adapter); under ZeRO-3 they are partitions unless gathered."""
    return {name: t for name, t in model.state_dict().items() if is_lora_parameter(name)}


def apply_lora(model: nn.Module, lora: LoraConfig) -> list[str]:
    """main.py's LoRA step: convert the scoped linears and, with --only_optimize_lora, freeze everything else."""
    if not lora.enabled:
        return []
    names = convert_linear_layer_to_lora(
        model, lora.lora_module_name, lora.lora_dim, lora.lora_alpha, lora.lora_dropout
    )
    if lora.only_optimize_lora:
        only_optimize_lora_parameters(model)
        make_model_gradient_checkpointing_compatible(model)
    return names
