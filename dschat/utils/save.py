"""Save the trained model in Hugging Face format: gathered under ZeRO-3, complete tokenizer, atomic swap-in."""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import nn

from dschat.config import LoraConfig, OutputConfig
from dschat.run_dir import BIN_WEIGHTS_NAME, CONFIG_NAME, SAFE_WEIGHTS_NAME, write_run_info
from dschat.utils import atomic
from dschat.utils.data import chat_export
from dschat.utils.log import global_rank
from dschat.utils.model.model_utils import unwrap_model
from dschat.utils.module.lora import convert_lora_to_linear_layer, is_lora_parameter, lora_modules
from dschat.utils.module.peft_export import save_peft_adapter

logger = logging.getLogger(__name__)

# Every weight file from_pretrained may pick up; the ones a save did not write are stale and removed.
WEIGHT_FILE_PATTERNS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)
# Large enough that the legacy .bin format stays a single file, as upstream wrote it.
SINGLE_FILE_SHARD_SIZE = "100000GB"


def gather_state_dict(module: nn.Module, zero_stage: int) -> dict[str, torch.Tensor] | None:
    """Full CPU state dict (LoRA keys dropped) on rank 0, None elsewhere; collective under ZeRO-3."""
    module = unwrap_model(module)
    is_writer = global_rank() == 0
    if zero_stage < 3 and not is_writer:
        return None
    # keep_vars gives the live Parameters, so ZeRO-3 partitions can be gathered, and tied weights show up as
    # one object under several keys: copying each object once keeps them one tensor for save_pretrained to dedupe.
    copies: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if is_lora_parameter(name):  # already fused into the base weights
            continue
        if id(tensor) not in copies:
            copies[id(tensor)] = _cpu_copy(tensor, zero_stage, is_writer)
        state[name] = copies[id(tensor)]
    return state if is_writer else None


def _cpu_copy(tensor: Any, zero_stage: int, is_writer: bool) -> Any:
    """The full value of one state-dict entry on CPU; under ZeRO-3 every rank takes part in the gather."""
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if zero_stage == 3 and hasattr(tensor, "ds_id"):
        # One parameter at a time bounds the extra memory to the largest single tensor.
        with deepspeed.zero.GatheredParameters([tensor]):
            # The gathered storage is released on exit, so rank 0 needs a real copy.
            return tensor.detach().to("cpu", copy=True) if is_writer else None
    # Below ZeRO-3 a tensor already on CPU is not copied: the entry shares memory with the live parameter.
    return tensor.detach().to("cpu")


def zero3_gather(params: list[nn.Parameter]):
    """Gather partitioned parameters for a rank-0 modification that is re-partitioned on exit."""
    return deepspeed.zero.GatheredParameters(params, modifier_rank=0, enabled=hasattr(params[0], "ds_id"))


def fuse_lora(model: nn.Module, zero_stage: int) -> None:
    """Fold LoRA into the base weights before saving (upstream fuses right before its save too)."""
    module = unwrap_model(model)
    if lora_modules(module):
        convert_lora_to_linear_layer(module, zero3_gather if zero_stage == 3 else None)


def save_hf_format(
    model: nn.Module,
    tokenizer: Any,
    output_dir: str | os.PathLike,
    zero_stage: int = 0,
    safe_serialization: bool = True,
    run_info: dict | None = None,
) -> None:
    """Write weights, config, tokenizer and run info to output_dir; every rank must call it (ZeRO-3 gather)."""
    module = unwrap_model(model)
    state_dict = gather_state_dict(module, zero_stage)
    if global_rank() == 0:
        _write_hf_format(module, tokenizer, Path(output_dir), state_dict, safe_serialization, run_info)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_hf_format(
    module: nn.Module,
    tokenizer: Any,
    output_dir: Path,
    state_dict: dict[str, torch.Tensor],
    safe_serialization: bool,
    run_info: dict | None,
) -> None:
    """Rank 0: write everything into a temp dir inside output_dir, then swap the files in, config.json last."""
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic.sweep(output_dir)  # what a killed save left
    temp_dir = atomic.temp_sibling(output_dir / "save")
    temp_dir.mkdir()
    try:
        # transformers 5 always writes safetensors; the legacy .bin is converted from that single file, so both
        # formats hold exactly the keys save_pretrained chose (tied weights deduplicated, original key names).
        shard_size = {} if safe_serialization else {"max_shard_size": SINGLE_FILE_SHARD_SIZE}
        module.save_pretrained(temp_dir, state_dict=state_dict, **shard_size)
        if not safe_serialization:
            _safetensors_to_bin(temp_dir / SAFE_WEIGHTS_NAME, temp_dir / BIN_WEIGHTS_NAME)
        chat_export.save_chat_format(tokenizer, temp_dir, run_info)  # template: the trained format
        if run_info is not None:
            write_run_info(temp_dir, run_info)
        atomic.default_permissions(temp_dir)
        _swap_in(temp_dir, output_dir)
    finally:
        if temp_dir.exists():
            shutil.rmtree(temp_dir)
    logger.info(
        "saved model format=%s output_dir=%s", "safetensors" if safe_serialization else "bin", output_dir
    )


def _safetensors_to_bin(safetensors_path: Path, bin_path: Path) -> None:
    """Rewrite a single safetensors file as a torch.save'd state dict (loadable with weights_only=True)."""
    torch.save(load_file(safetensors_path), bin_path)
    safetensors_path.unlink()


def _swap_in(temp_dir: Path, output_dir: Path) -> None:
    """Move every new file into output_dir, drop stale weight files, and publish config.json last."""
    new_names = sorted(entry.name for entry in temp_dir.iterdir())
    if CONFIG_NAME not in new_names:
        raise RuntimeError(f"save_pretrained wrote no {CONFIG_NAME} into {temp_dir}")
    # Without config.json the directory does not look loadable while its files are being replaced.
    (output_dir / CONFIG_NAME).unlink(missing_ok=True)
    for name in new_names:
        if name != CONFIG_NAME:
            _replace(temp_dir / name, output_dir / name)
    for entry in output_dir.iterdir():
        is_weight_file = any(fnmatch.fnmatch(entry.name, pattern) for pattern in WEIGHT_FILE_PATTERNS)
        if is_weight_file and entry.name not in new_names:
            logger.info("removing stale weight file %s", entry)
            entry.unlink()
    os.replace(temp_dir / CONFIG_NAME, output_dir / CONFIG_NAME)


def _replace(source: Path, target: Path) -> None:
    """os.replace that also replaces an existing directory."""
    if source.is_dir() and target.is_dir():
        shutil.rmtree(target)
    os.replace(source, target)


def save_final_model(
    engine,
    tokenizer,
    output: OutputConfig,
    lora: LoraConfig,
    zero_stage: int,
    base_model: str,
    run_info: dict,
) -> None:
    """The end of a run: the PEFT adapter if asked (before fusing), LoRA fused, then the HF model."""
    with atomic.disk_space_guard(output.output_dir, "the final model"):
        _save_final_model(engine, tokenizer, output, lora, zero_stage, base_model, run_info)


def _save_final_model(engine, tokenizer, output, lora, zero_stage, base_model, run_info) -> None:
    gather = zero3_gather if zero_stage == 3 else None
    if output.save_lora_adapter:
        save_peft_adapter(
            engine,
            output.output_dir,
            base_model,
            lora.lora_alpha,
            lora.lora_dim,
            lora.lora_dropout,
            gather=gather,
            write_extra=lambda adapter_dir: chat_export.save_chat_format(tokenizer, adapter_dir, run_info),
        )
    fuse_lora(engine, zero_stage)
    save_hf_format(
        engine,
        tokenizer,
        output.output_dir,
        zero_stage,
        safe_serialization=output.save_format == "safetensors",
        run_info=run_info,
    )
