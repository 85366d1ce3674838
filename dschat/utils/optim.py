"""Optimizer parameter groups, the Adam(W) choice and the LR schedule, as upstream step 1 builds them."""

from __future__ import annotations

import logging
import math
import subprocess
from collections.abc import Sequence

import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
from torch import nn
from transformers import get_scheduler

from dschat.config import OptimConfig
from dschat.utils.module.lora import LORA_PARAM_NAMES

logger = logging.getLogger(__name__)

# Substrings of the lower-cased parameter name that exclude it from weight decay (upstream's list since PR #755).
# GPT-2's `ln_1.weight`/`ln_2.weight` match none of them and so are decayed, as upstream does.
NO_DECAY_NAMES = ["bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight"]
# Substrings naming the LoRA matrices, which get their own learning rate (lora.py owns the names).
LORA_NAMES = list(LORA_PARAM_NAMES)

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8


def get_optimizer_grouped_parameters(
    model: nn.Module,
    weight_decay: float,
    lora_lr: float = 5e-4,
    no_decay_name_list: Sequence[str] = NO_DECAY_NAMES,
    lora_name_list: Sequence[str] = LORA_NAMES,
) -> list[dict]:
    """Split trainable parameters into [decayed, LoRA (own lr), not decayed] groups; empty groups are dropped."""
    decay: list[nn.Parameter] = []
    lora: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if any(pattern in lowered for pattern in no_decay_name_list):
            no_decay.append(param)
        elif any(pattern in lowered for pattern in lora_name_list):
            lora.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": lora, "weight_decay": weight_decay, "lr": lora_lr},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    for label, group in zip(("decay", "lora", "no_decay"), groups, strict=True):
        # Under ZeRO-3 the parameters are already partitioned: ds_numel is the full size.
        count = sum(getattr(p, "ds_numel", p.numel()) for p in group["params"])
        lr = f" lr={group['lr']:g}" if "lr" in group and group["params"] else ""
        logger.info("param_group=%s tensors=%d parameters=%d%s", label, len(group["params"]), count, lr)
    return [group for group in groups if group["params"]]


def create_optimizer(param_groups: list[dict], learning_rate: float, offload: bool) -> torch.optim.Optimizer:
    """AdamW (decoupled decay, betas 0.9/0.95, eps 1e-8): CPU Adam when offloading, FusedAdam on an accelerator."""
    # Read the groups' own rates first: torch's optimizers write their default lr into every group they get.
    own_rates = sorted({group["lr"] for group in param_groups if "lr" in group})  # the LoRA group's
    only_own = bool(own_rates) and all("lr" in group for group in param_groups)
    if offload:
        optimizer = DeepSpeedCPUAdam(
            param_groups, lr=learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, adamw_mode=True
        )
    elif get_accelerator().device_name() != "cpu":
        optimizer = fused_adam(param_groups, learning_rate)
    else:
        # Upstream would JIT-build FusedAdam's CPU op here; torch's AdamW computes the same update.
        optimizer = torch.optim.AdamW(
            param_groups, lr=learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, foreach=False
        )
    rates = f"lr={learning_rate:g}" + "".join(f" lora_lr={rate:g}" for rate in own_rates)
    if only_own:
        rates = "".join(f"lora_lr={rate:g}" for rate in own_rates) + " (only LoRA parameters train)"
    logger.info("optimizer=%s %s betas=%s eps=%g", type(optimizer).__name__, rates, ADAM_BETAS, ADAM_EPS)
    return optimizer


def fused_adam(param_groups: list[dict], learning_rate: float) -> torch.optim.Optimizer:
    """DeepSpeed's FusedAdam, JIT-built on first use; torch's fused AdamW (the same update) where it cannot be
    built (no CUDA compiler or ninja on the machine: upstream stops there)."""
    try:
        return FusedAdam(param_groups, lr=learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, adam_w_mode=True)
    except (RuntimeError, OSError, ImportError, subprocess.CalledProcessError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        logger.warning(
            "FusedAdam could not be built (%s): using torch's fused AdamW, the same update", reason
        )
        return torch.optim.AdamW(param_groups, lr=learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


def num_update_steps(
    num_micro_batches_per_epoch: int, gradient_accumulation_steps: int, num_train_epochs: int
) -> int:
    """Optimizer updates over the whole run: epochs x ceil(micro-batches per epoch / accumulation steps)."""
    return num_train_epochs * math.ceil(num_micro_batches_per_epoch / gradient_accumulation_steps)


def create_lr_scheduler(
    optimizer: torch.optim.Optimizer, scheduler_type: str, num_warmup_steps: int, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """HF's named schedule (cosine, linear, ...) with linear warmup, stepped once per optimizer update."""
    logger.info(
        "lr_scheduler=%s num_warmup_steps=%d num_training_steps=%d",
        scheduler_type,
        num_warmup_steps,
        num_training_steps,
    )
    return get_scheduler(
        scheduler_type, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps
    )


def schedule_for_run(
    optimizer: torch.optim.Optimizer,
    optim: OptimConfig,
    micro_batches_per_epoch: int,
    gradient_accumulation_steps: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's LR schedule over all its optimizer updates (--max_steps does not shorten it)."""
    updates = num_update_steps(micro_batches_per_epoch, gradient_accumulation_steps, optim.num_train_epochs)
    return create_lr_scheduler(optimizer, optim.lr_scheduler_type, optim.num_warmup_steps, updates)
