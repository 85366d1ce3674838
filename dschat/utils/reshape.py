"""Resuming on another cluster shape: more or fewer ranks and their micro-batch, another ZeRO stage among 1-3.

The maths depends on the global batch (micro-batch x accumulation x ranks), which a resume must keep; how it is
cut over ranks is the "shape" (the accumulation stays: metrics and the data position count micro-steps).
DeepSpeed shards the optimizer state by rank under ZeRO 1-3, so another shape loads a DeepSpeed universal
checkpoint, converted from the verified one by DeepSpeed's own ``ds_to_universal`` (rank 0,
once, in a temporary directory removed after loading). A ZeRO-0 checkpoint holds the whole state in one file:
any number of ranks loads it directly. The data position carries over in global samples: DistributedSampler
deals sample ``k`` of the epoch's permutation to rank ``k % world``, so after ``n`` micro-steps of ``m`` samples
on ``W`` ranks exactly the first ``n * m * W`` samples are used, on any shape, and none is skipped or repeated.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from dschat.errors import DschatError
from dschat.utils import atomic, dist, universal_bridge

logger = logging.getLogger(__name__)

# Stages whose checkpoints load into one another on another shape: ZeRO-0 holds the whole state in one file (no
# conversion); ds_to_universal of a ZeRO 1-3 checkpoint loads into ZeRO 1-3, between ZeRO 1-2 and ZeRO-3 with
# the files the other stage's loader reads added (universal_bridge), into ZeRO-3 with its shared step counter
# untied (below).
CONVERTIBLE = ((0,), (1, 2, 3))


@dataclass
class ResumePoint:
    """Where DeepSpeed loads from (the checkpoint, or its universal conversion) and the shape it was saved in."""

    path: str  # the verified checkpoint: dschat's state and RNG files
    load_dir: str  # what engine.load_checkpoint reads: ``path`` or a universal conversion of it
    saved_shape: dict
    universal: bool = False

    def done(self) -> None:
        """Remove a universal conversion once every rank has loaded it."""
        dist.barrier()
        if self.universal and dist.get_rank() == 0:
            shutil.rmtree(self.load_dir, ignore_errors=True)


def reshape_problem(saved: dict, now: dict, group_by_length: bool) -> str | None:
    """Why a checkpoint of shape ``saved`` cannot be resumed in shape ``now``, or None."""
    if saved == now:
        return None
    stages = saved.get("zero_stage"), now.get("zero_stage")
    if group_by_length:
        return (
            "--group_by_length deals batches per rank, so its data position does not carry to another shape"
        )
    if saved.get("gradient_accumulation_steps") != now.get("gradient_accumulation_steps"):
        return (
            f"--gradient_accumulation_steps must stay {saved.get('gradient_accumulation_steps')}: a run's metrics and "
            "data position count its micro-steps (change the ranks and micro-batch instead)"
        )
    if any(stages[0] in group and stages[1] in group for group in CONVERTIBLE):
        return None
    return (
        f"a ZeRO-{stages[0]} checkpoint cannot be loaded as ZeRO-{stages[1]} on another shape: DeepSpeed 0.19.8 "
        "restores another shape's optimizer state exactly for ZeRO 0 (as it is) and among ZeRO 1, 2 and 3"
    )


def plan(path: str | None, saved_shape: dict | None, now: dict, group_by_length: bool, ds_config: dict):
    """The ResumePoint for ``path`` (None: a fresh start); converts to a universal checkpoint when needed and
    sets ``ds_config`` to load it. Call before the engine is made."""
    if path is None:
        return None
    saved_shape = saved_shape or now  # a checkpoint from before shapes were recorded: as today's
    if problem := reshape_problem(saved_shape, now, group_by_length):
        raise DschatError(
            f"cannot resume {path} (saved as {describe(saved_shape)}) as {describe(now)}: {problem}. Resume with "
            f"--zero_stage {saved_shape.get('zero_stage')} (any number of ranks and micro-batch split with the same "
            "global batch works there)"
        )
    if saved_shape == now:
        return ResumePoint(path, path, saved_shape)
    logger.warning(
        "resuming %s, saved as %s, as %s: the same global batch and data order; bit-exact only with the same shape"
        " (and the same per-sample weights with --loss_normalization token)",
        path,
        describe(saved_shape),
        describe(now),
    )
    if saved_shape["zero_stage"] == 0:  # one file holds the whole state: every rank loads it as it is
        return ResumePoint(path, path, saved_shape)
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    load_dir = dist.decided_by_rank0(convert_to_universal, path, saved_shape["zero_stage"], now["zero_stage"])
    return ResumePoint(path, load_dir, saved_shape, universal=True)


def describe(shape: dict) -> str:
    return (
        f"{shape.get('world_size')} rank(s) x micro-batch {shape.get('per_device_train_batch_size')} x "
        f"{shape.get('gradient_accumulation_steps')} accumulation, ZeRO-{shape.get('zero_stage')}"
    )


def convert_to_universal(path: str, source_stage: int, target_stage: int) -> str:
    """DeepSpeed's ds_to_universal of a verified checkpoint, into a fresh temporary directory beside it, made
    loadable by ``target_stage``."""
    root, tag = os.path.split(path)
    # load_checkpoint(dir, tag) reads dir/tag: the conversion goes to <temporary dir>/<tag>
    holder = os.path.join(root, f"{atomic.TEMP_PREFIX}universal-{tag}-{os.getpid()}")
    shutil.rmtree(holder, ignore_errors=True)
    os.makedirs(holder)
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", path]
    command += ["--output_folder", os.path.join(holder, tag), "--num_extract_workers", "1"]
    command += [
        "--num_merge_workers",
        "1",
        "--inject_missing_state",
    ]  # no tensor parallelism: the defaults fit
    logger.info("converting %s to a universal checkpoint for the new shape ...", path)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(holder, ignore_errors=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DschatError(f"DeepSpeed's ds_to_universal could not convert {path}: {last}")
    universal_bridge.bridge(os.path.join(holder, tag), source_stage, target_stage)
    return holder


def untie_optimizer_steps(engine) -> int:
    """Give each parameter's optimizer state its own ``step`` tensor; returns how many were shared.

    DeepSpeed 0.19.8's ZeRO-3 universal load (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``) stores
    one and the same ``step`` tensor in the state of every ZeRO-3 sub-group. torch's Adam adds 1 to it in
    place per sub-group, so after the first resumed update the count has run ahead by the number of sub-groups
    and every later update uses the wrong bias correction (measured: the loss 1e-3 off two steps after
    resume). Optimizers that count in Python ints or per parameter group are untouched.
    """
    import torch

    optimizer = getattr(engine.optimizer, "optimizer", engine.optimizer)
    seen, shared = set(), 0
    for state in optimizer.state.values():
        step = state.get("step")
        if not torch.is_tensor(step):
            continue
        if id(step) in seen:
            state["step"] = step.clone()
            shared += 1
        seen.add(id(step))
    return shared


def rescale(counter: int, saved: dict, now: dict, what: str) -> int:
    """A count of micro-batches in the saved shape, in micro-batches of the new shape (same samples)."""
    samples = counter * saved["per_device_train_batch_size"] * saved["world_size"]
    per_step = now["per_device_train_batch_size"] * now["world_size"]
    if samples % per_step:
        raise DschatError(
            f"the checkpoint's {what} ({samples} samples) is not a whole number of micro-steps of {per_step} "
            "samples in the new shape: keep the global batch and resume from a checkpoint at an update boundary"
        )
    return samples // per_step
