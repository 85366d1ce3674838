"""``--dry_run``: the run's plan (model size, batches, steps, ZeRO, memory estimate) without loading weights.

The plan is the run's: the same datasets (packed rows with ``--packing``), the same LoRA layers (applied to a
weightless meta-device model, so a scope the run would reject is rejected here too), and a memory estimate
whose optimizer states cover only what trains.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from dschat.config import TrainConfig
from dschat.utils.data.batching import PackedDataset
from dschat.utils.data.data_utils import prepare_datasets
from dschat.utils.model.model_utils import TORCH_DTYPES, model_config_only
from dschat.utils.module.lora import apply_lora

logger = logging.getLogger(__name__)

GIB = 1024**3


@dataclass
class Plan:
    model: str
    model_type: str
    num_params: int
    trainable_params: int
    largest_layer_params: int
    world_size: int
    per_device_batch: int
    gradient_accumulation_steps: int
    train_samples: int  # rows the train loader sees: packed rows with --packing
    eval_samples: int
    packing: bool
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
            f"trainable={self.trainable_params:,} largest_layer={self.largest_layer_params:,} dtype={self.dtype}",
            f"world_size={self.world_size} per_device_batch={self.per_device_batch} "
            f"gradient_accumulation_steps={self.gradient_accumulation_steps} global_batch={self.global_batch}",
            f"train_{'rows' if self.packing else 'samples'}={self.train_samples} eval_samples={self.eval_samples} "
            f"micro_batches_per_epoch={self.micro_batches_per_epoch} updates_per_epoch={self.updates_per_epoch} "
            f"epochs={self.num_train_epochs} total_updates={total_updates}",
            f"zero_stage={self.zero_stage} offload={self.offload}",
            f"model states per device (DeepSpeed estimator, activations not included): "
            f"device={self.device_memory_bytes / GIB:.2f}GiB host={self.host_memory_bytes / GIB:.2f}GiB "
            f"device_bytes={self.device_memory_bytes} host_bytes={self.host_memory_bytes}",
        ]


def meta_model(config, cfg: TrainConfig):
    """The run's model on the meta device (no memory), with its LoRA layers."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        apply_lora(model, cfg.lora)
    return model


def count_params(model) -> tuple[int, int, int]:
    """Total and trainable parameters (tied weights once), and the largest single module's parameters."""
    unique = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in unique)
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, trainable, largest


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


def model_state_bytes(total: int, trainable: int, largest: int, cfg: TrainConfig, world_size: int):
    """(device, host) bytes: DeepSpeed's estimate for what trains, plus the frozen weights themselves."""
    device, host = estimate_memory(trainable, largest, cfg.engine.zero_stage, cfg.engine.offload, world_size)
    frozen = (total - trainable) * TORCH_DTYPES[cfg.engine.dtype].itemsize
    if cfg.engine.zero_stage == 3:
        frozen //= world_size
    return device + frozen, host


def make_plan(cfg: TrainConfig, world_size: int, train_samples: int, eval_samples: int) -> Plan:
    """The plan for this run: reads the model config only, never the weights."""
    model = cfg.model
    config = model_config_only(
        model.model_name_or_path, dropout=model.dropout, trust_remote_code=model.trust_remote_code
    )
    total, trainable, largest = count_params(meta_model(config, cfg))
    device, host = model_state_bytes(total, trainable, largest, cfg, world_size)
    return Plan(
        model=model.model_name_or_path,
        model_type=config.model_type,
        num_params=total,
        trainable_params=trainable,
        largest_layer_params=largest,
        world_size=world_size,
        per_device_batch=cfg.batch.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.batch.gradient_accumulation_steps,
        train_samples=train_samples,
        eval_samples=eval_samples,
        packing=cfg.batch.packing,
        zero_stage=cfg.engine.zero_stage,
        offload=cfg.engine.offload,
        dtype=cfg.engine.dtype,
        num_train_epochs=cfg.optim.num_train_epochs,
        max_steps=cfg.loop.max_steps,
        device_memory_bytes=device,
        host_memory_bytes=host,
    )


def log_plan(cfg: TrainConfig, tokenizer, world_size: int) -> Plan:
    """Build (or reuse) the data cache, then log the plan; main.py returns right after (``--dry_run``)."""
    train, evaluation = prepare_datasets(cfg.data, tokenizer)
    rows = len(PackedDataset(train, cfg.data.max_seq_len, cfg.data.seed)) if cfg.batch.packing else len(train)
    plan = make_plan(cfg, world_size, rows, len(evaluation))
    logger.info("dry run: nothing is trained or saved; the plan:")
    for line in plan.lines():
        logger.info("  %s", line)
    return plan
