"""``--dry_run``: the run's plan (model size, batches, steps, ZeRO, memory estimate) without loading weights."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from dschat.utils.data.data_utils import create_phase1_datasets
from dschat.utils.model.model_utils import model_config_only

logger = logging.getLogger(__name__)

GIB = 1024**3


@dataclass
class Plan:
    model: str
    model_type: str
    num_params: int
    largest_layer_params: int
    world_size: int
    per_device_batch: int
    gradient_accumulation_steps: int
    train_samples: int
    eval_samples: int
    zero_stage: int
    offload: bool
    dtype: str
    num_train_epochs: int
    max_steps: int
    device_memory_bytes: int
    host_memory_bytes: int

    @property
    def global_batch(self) -> int:
        return self.per_device_batch * self.world_size * self.gradient_accumulation_steps

    @property
    def micro_batches_per_epoch(self) -> int:
        """DistributedSampler pads the data to a multiple of the world size, then batches per device."""
        return math.ceil(math.ceil(self.train_samples / self.world_size) / self.per_device_batch)

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.micro_batches_per_epoch / self.gradient_accumulation_steps)

    def lines(self) -> list[str]:
        total_updates = self.updates_per_epoch * self.num_train_epochs
        if self.max_steps:
            total_updates = min(total_updates, self.max_steps)
        return [
            f"model={self.model} type={self.model_type} parameters={self.num_params:,} "
            f"largest_layer={self.largest_layer_params:,} dtype={self.dtype}",
            f"world_size={self.world_size} per_device_batch={self.per_device_batch} "
            f"gradient_accumulation_steps={self.gradient_accumulation_steps} global_batch={self.global_batch}",
            f"train_samples={self.train_samples} eval_samples={self.eval_samples} "
            f"micro_batches_per_epoch={self.micro_batches_per_epoch} updates_per_epoch={self.updates_per_epoch} "
            f"epochs={self.num_train_epochs} total_updates={total_updates}",
            f"zero_stage={self.zero_stage} offload={self.offload}",
            f"model states per device (DeepSpeed estimator, activations not included): "
            f"device={self.device_memory_bytes / GIB:.2f}GiB host={self.host_memory_bytes / GIB:.2f}GiB",
        ]


def count_params_without_weights(config) -> tuple[int, int]:
    """Total parameters and the largest single module's parameters, from a meta-device model (no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(
        {p.data_ptr() if p.device.type != "meta" else id(p): p.numel() for p in model.parameters()}.values()
    )
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def estimate_memory(num_params: int, largest_layer: int, zero_stage: int, offload: bool, world_size: int):
    """DeepSpeed's model-state estimators: (device bytes, host bytes) per device."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    if zero_stage == 3:
        host, device, _ = estimate_zero3_model_states_mem_needs(
            num_params,
            largest_layer,
            num_gpus_per_node=world_size,
            cpu_offload=offload,
            cpu_offload_params=offload,
        )
    else:
        partitions = world_size if zero_stage > 0 else 1  # ZeRO 0 replicates every state on every device
        host, device = estimate_zero2_model_states_mem_needs(
            num_params, num_gpus_per_node=partitions, cpu_offload=offload
        )
    return int(device), int(host)


def make_plan(args, world_size: int, train_samples: int, eval_samples: int) -> Plan:
    """The plan for these flags: reads the model config only, never the weights."""
    config = model_config_only(
        args.model_name_or_path, dropout=args.dropout, trust_remote_code=args.trust_remote_code
    )
    num_params, largest = count_params_without_weights(config)
    device, host = estimate_memory(num_params, largest, args.zero_stage, args.offload, world_size)
    return Plan(
        model=args.model_name_or_path,
        model_type=config.model_type,
        num_params=num_params,
        largest_layer_params=largest,
        world_size=world_size,
        per_device_batch=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        train_samples=train_samples,
        eval_samples=eval_samples,
        zero_stage=args.zero_stage,
        offload=args.offload,
        dtype=args.dtype,
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        device_memory_bytes=device,
        host_memory_bytes=host,
    )


def log_plan(args, tokenizer, world_size: int) -> Plan:
    """Build (or reuse) the data cache, then log the plan; main.py returns right after (``--dry_run``)."""
    train, evaluation = create_phase1_datasets(args, tokenizer)
    plan = make_plan(args, world_size, len(train), len(evaluation))
    logger.info("dry run: nothing is trained or saved; the plan:")
    for line in plan.lines():
        logger.info("  %s", line)
    return plan
