"""A universal checkpoint of one ZeRO stage family made loadable by the other: ZeRO 1-2 <-> ZeRO-3.

DeepSpeed's ``ds_to_universal`` writes a folder per parameter under ``zero/`` (the full, unpartitioned fp32
master weight and Adam's two moments; from ZeRO 1-2 also the step count), a global optimizer file and the
source's model-state files (LR scheduler, step counters). DeepSpeed 0.19.8's two universal loaders read the
per-parameter tensors alike, but each expects the global file's layout, the model-state file's name and the
step count where its own stage writes them. ``bridge`` adds what the target stage reads, from the same
values, so nothing is re-sharded here: DeepSpeed still partitions every tensor for the new shape.
"""

from __future__ import annotations

import os
import shutil

import torch

from dschat.errors import DschatError

# deepspeed.checkpoint.constants' names, as the loaders read them
OPTIMIZER_STATE_DICT, PARAM, PARAM_GROUPS, DS_VERSION = (
    "optimizer_state_dict",
    "param",
    "param_groups",
    "ds_version",
)
STATES = ("fp32", "exp_avg", "exp_avg_sq")
ZERO12_MODEL_FILE = "mp_rank_00_model_states.pt"  # no tensor or pipeline parallelism: one model-state file
ZERO3_MODEL_FILE = "zero_pp_rank_0_mp_rank_00_model_states.pt"  # the universal loader reads data rank 0's


def needed(source_stage: int, target_stage: int) -> bool:
    return (
        source_stage in (1, 2, 3) and target_stage in (1, 2, 3) and (source_stage == 3) != (target_stage == 3)
    )


def bridge(folder: str, source_stage: int, target_stage: int) -> None:
    """Make the universal checkpoint in ``folder`` (converted from ``source_stage``) loadable as ``target_stage``."""
    if not needed(source_stage, target_stage):
        return
    zero = os.path.join(folder, "zero")
    global_path = os.path.join(zero, "optimizer_state.pt")
    optim = torch.load(global_path, map_location="cpu", weights_only=False)
    params = sorted(name for name in os.listdir(zero) if os.path.isdir(os.path.join(zero, name)))
    if target_stage == 3:
        optim[OPTIMIZER_STATE_DICT] = {
            "state": {0: {"step": zero12_step(zero, params)}},
            PARAM_GROUPS: optim[PARAM_GROUPS],
        }
        shutil.copy2(os.path.join(folder, ZERO12_MODEL_FILE), os.path.join(folder, ZERO3_MODEL_FILE))
    else:
        step = optim[OPTIMIZER_STATE_DICT]["state"][0]["step"]
        for name in params:
            wrap_zero3_states(os.path.join(zero, name), step)
        optim.pop(
            "fp32_flat_groups", None
        )  # data rank 0's own partition: the per-parameter files hold it all
        optim.setdefault(DS_VERSION, deepspeed_version())
        shutil.copy2(os.path.join(folder, ZERO3_MODEL_FILE), os.path.join(folder, ZERO12_MODEL_FILE))
    torch.save(optim, global_path)


def zero12_step(zero: str, params: list[str]):
    """The optimizer step count ZeRO 1-2 keeps per parameter (all equal); ZeRO-3 keeps one for all."""
    for name in params:
        path = os.path.join(zero, name, "step.pt")
        if os.path.isfile(path):
            return torch.load(path, weights_only=False)
    raise DschatError(f"no step.pt under {zero}: not a universal checkpoint of a ZeRO 1-2 optimizer")


def wrap_zero3_states(param_dir: str, step) -> None:
    """ZeRO-3's per-parameter tensors as ZeRO 1-2's loader reads them ({"param": tensor}), and its step file."""
    for state in STATES:
        path = os.path.join(param_dir, f"{state}.pt")
        if not os.path.isfile(path):
            continue
        value = torch.load(path, map_location="cpu", weights_only=False)
        if torch.is_tensor(value):
            torch.save({PARAM: value}, path)
    if os.path.isfile(os.path.join(param_dir, "exp_avg.pt")):  # a trained parameter: it has a step count
        torch.save(step.clone() if torch.is_tensor(step) else step, os.path.join(param_dir, "step.pt"))


def deepspeed_version() -> str:
    import deepspeed

    return deepspeed.__version__
