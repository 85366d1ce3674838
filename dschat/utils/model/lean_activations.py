"""Llama-style layers that keep less for backward (--activation_memory lean): the SiLU-gated MLP and RMSNorm.

Through autograd, ``down_proj(silu(gate_proj(x)) * up_proj(x))`` keeps four tensors of the intermediate width
per token for backward: the gate's output (for SiLU), SiLU's output and the up projection's output (for the
product), and the product (for down_proj's weight gradient). ``LeanSwiGLU`` keeps the gate's and the up
projection's outputs and recomputes SiLU and the product in backward: half the MLP's activations, the largest
share of a step's saved tensors (SmolLM2-135M at 4 x 512: 0.70 of 1.54 GB). RMSNorm through autograd keeps its
fp32 input and its normalised output; ``LeanRMSNorm`` keeps the input and one scale per token and
recomputes the product. The forward ops are the modules' own, so the outputs are identical; the gradients
equal autograd's within float rounding (tested on Llama, Qwen2, Mistral).

Applied only where that is exactly the module's computation, checked on every call: plain bias-free
``nn.Linear`` projections and a SiLU activation (not LoRA layers, which dschat puts in after the model is
built), an RMSNorm class whose forward is Llama's, and no ZeRO-3 partitioned weights (its module hooks gather
them, so those modules run their own forward).
"""

from __future__ import annotations

import logging
import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import SiLUActivation

logger = logging.getLogger(__name__)

# transformers 5 builds hidden_act="silu" as its own SiLUActivation (forward: F.silu); torch's nn.SiLU alike
SILU_TYPES = (nn.SiLU, SiLUActivation)
# RMSNorm classes whose forward is Llama's: x * rsqrt(mean(x^2) + eps) in fp32, cast back, times weight (read in
# transformers' modeling files; Gemma's (1 + weight) and others differ)
LLAMA_RMSNORMS = frozenset(("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"))


class LeanSwiGLU(torch.autograd.Function):
    """down(silu(x @ Wg.T) * (x @ Wu.T)) saving x, the gate and up outputs, and the three weights."""

    @staticmethod
    def forward(ctx, x, gate_weight, up_weight, down_weight):
        gate, up = F.linear(x, gate_weight), F.linear(x, up_weight)
        out = F.linear(F.silu(gate) * up, down_weight)
        ctx.save_for_backward(x, gate, up, gate_weight, up_weight, down_weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, gate, up, gate_weight, up_weight, down_weight = ctx.saved_tensors
        silu = F.silu(gate)
        grad_product = grad_out @ down_weight  # d out / d (silu * up)
        grad_down = _weight_grad(grad_out, silu * up) if ctx.needs_input_grad[3] else None
        grad_up = grad_product * silu
        del silu
        # autograd's own SiLU gradient kernel
        grad_gate = torch.ops.aten.silu_backward(grad_product * up, gate)
        del grad_product
        grad_x = grad_gate @ gate_weight + grad_up @ up_weight if ctx.needs_input_grad[0] else None
        grad_gate_weight = _weight_grad(grad_gate, x) if ctx.needs_input_grad[1] else None
        grad_up_weight = _weight_grad(grad_up, x) if ctx.needs_input_grad[2] else None
        return grad_x, grad_gate_weight, grad_up_weight, grad_down


class LeanRMSNorm(torch.autograd.Function):
    """weight * (x * rsqrt(mean(x^2) + eps)) (in fp32, cast back to x's dtype) saving x and the per-token scale."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        out = weight * (x.float() * scale).to(x.dtype)
        ctx.save_for_backward(x, scale, weight)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, weight = ctx.saved_tensors
        normed = x.float() * scale
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (
                (grad_out * normed.to(x.dtype)).reshape(-1, weight.shape[-1]).sum(0).to(weight.dtype)
            )
        grad_normed = (grad_out * weight).float()
        # d/dx of x * rsqrt(mean(x^2) + eps): scale * (g - normed * mean(g * normed))
        grad_x = scale * (grad_normed - normed * (grad_normed * normed).mean(-1, keepdim=True))
        return grad_x.to(x.dtype), grad_weight, None


def _weight_grad(grad_output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight gradient: grad_output.T @ inputs over every leading dimension."""
    return grad_output.reshape(-1, grad_output.shape[-1]).T @ inputs.reshape(-1, inputs.shape[-1])


def lean_mlp_unsupported(module: nn.Module) -> str | None:
    """Why a gated MLP (gate/up/down projections) cannot take the lean forward, or None."""
    projections = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if any(type(p) is not nn.Linear for p in projections):
        return "its projections are not plain nn.Linear layers (LoRA?)"
    if any(p.bias is not None for p in projections):
        return "its projections have biases"
    if any(hasattr(p.weight, "ds_id") for p in projections):
        return "ZeRO-3 partitions its weights (its module hooks gather them)"
    if type(getattr(module, "act_fn", None)) not in SILU_TYPES:
        return f"its activation is {type(getattr(module, 'act_fn', None)).__name__}, not SiLU"
    return None


def lean_norm_unsupported(module: nn.Module) -> str | None:
    if type(module).__name__ not in LLAMA_RMSNORMS:
        return f"{type(module).__name__} is not Llama's RMSNorm"
    if hasattr(module.weight, "ds_id"):
        return "ZeRO-3 partitions its weight (its module hooks gather it)"
    return None


def _lean_mlp_forward(self, x):
    # Without gradients (evaluation, generation) autograd keeps nothing: the module's own forward is as lean.
    if not torch.is_grad_enabled() or lean_mlp_unsupported(self) is not None:
        return type(self).forward(self, x)
    return LeanSwiGLU.apply(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


def _lean_norm_forward(self, hidden_states):
    if not torch.is_grad_enabled() or lean_norm_unsupported(self) is not None:
        return type(self).forward(self, hidden_states)
    return LeanRMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


def use_lean_activations(model: nn.Module) -> int:
    """Give the gated MLPs and Llama RMSNorms of ``model`` the lean forward; returns how many modules."""
    gated = [m for m in model.modules() if all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj"))]
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    candidates = [(m, _lean_mlp_forward, lean_mlp_unsupported) for m in gated]
    candidates += [(m, _lean_norm_forward, lean_norm_unsupported) for m in norms]
    applied, reasons = {"MLPs": 0, "RMSNorms": 0}, set()
    for module, forward, unsupported in candidates:
        if (reason := unsupported(module)) is not None:
            reasons.add(reason)
            continue
        module.forward = types.MethodType(forward, module)
        applied["MLPs" if forward is _lean_mlp_forward else "RMSNorms"] += 1
    if candidates:
        why = f"; left as they are: {'; '.join(sorted(reasons))}" if reasons else ""
        logger.info(
            "activation_memory=lean on %d of %d gated MLPs and %d of %d RMSNorms%s (a module whose weights LoRA "
            "or ZeRO-3 takes over later runs its own forward)",
            applied["MLPs"],
            len(gated),
            applied["RMSNorms"],
            len(norms),
            why,
        )
    return sum(applied.values())
