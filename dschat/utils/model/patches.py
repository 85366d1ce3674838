"""What main.py may change on a loaded model (the fp32 loss, Liger's kernels) and where it draws dropout."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from dschat.errors import DschatError
from dschat.utils.data.collate import IGNORE_INDEX

# The only dropout keys upstream's --dropout overrides (resid_pdrop etc. are left alone).
DROPOUT_KEYS = ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout")


def _fp32_shifted_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy in fp32 over targets that are not IGNORE_INDEX: their mean, or (as transformers'
    loss) their sum / ``num_items_in_batch`` when given (--loss_normalization token)."""
    shift_logits = logits[..., :-1, :].float()
    shift_labels = labels[..., 1:].to(logits.device)
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="mean" if num_items_in_batch is None else "sum",
    )
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def causal_lm_model_to_fp32_loss(model: PreTrainedModel) -> None:
    """Make ``model(..., labels=...)`` compute its loss from fp32 logits (--compute_fp32_loss)."""
    if getattr(model, "_dschat_original_forward", None) is not None:
        return  # already wrapped
    original_forward = model.forward

    def forward_with_fp32_loss(
        *args: Any, labels: torch.Tensor | None = None, num_items_in_batch=None, **kwargs: Any
    ) -> Any:
        # Every other argument goes through untouched, so any architecture works (upstream needed head_mask).
        output = original_forward(*args, labels=None, **kwargs)
        if labels is None:
            return output
        is_model_output = isinstance(output, ModelOutput)
        loss = _fp32_shifted_loss(output.logits if is_model_output else output[0], labels, num_items_in_batch)
        if not is_model_output:
            return (loss, *output)
        if "loss" in {field.name for field in dataclasses.fields(output)}:
            return dataclasses.replace(output, loss=loss)  # keeps loss first in to_tuple()
        output["loss"] = loss
        return output

    model._dschat_original_forward = original_forward
    model.forward = forward_with_fp32_loss


DROPOUT_CONFIG_KEYS = DROPOUT_KEYS + (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def active_dropout(model: torch.nn.Module) -> list[str]:
    """Where the model draws dropout masks in training (nn.Dropout with p > 0, or dropout config values > 0).

    With dropout, the random masks depend on the batch's shape, so a seeded run only reproduces upstream's
    per-step losses when batches have upstream's shape (padded to max_seq_len).
    """
    found = [
        f"{name}(p={m.p})" for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout) and m.p > 0
    ]
    config = getattr(model, "config", None)
    for key in DROPOUT_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, (int, float)) and value > 0:
            found.append(f"config.{key}={value}")
    return found


def apply_liger_kernel(model: torch.nn.Module) -> None:
    """Swap in Liger's fused kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) on a GPU."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError as err:
        raise DschatError(
            "--use_liger_kernel needs the liger-kernel package: pip install liger-kernel"
        ) from err
    _apply_liger_kernel_to_instance(model=model)
