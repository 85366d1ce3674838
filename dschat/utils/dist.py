"""Thin helpers over torch.distributed that also work when no process group exists."""

from __future__ import annotations

import atexit
import glob
import os
import socket

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """This process's rank within its node: the launcher's LOCAL_RANK (0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def accelerator():
    """DeepSpeed's accelerator (imported here, after dschat has quietened its CPU-fallback warning)."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator()


def comm_device() -> str:
    """Device for collective tensors: the accelerator for NCCL-like backends, CPU for gloo."""
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().current_device_name()


def all_reduce_max(value: int) -> int:
    """Maximum of an integer over all ranks (int64: no wrap-around, unlike upstream's uint8 sum)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=comm_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks divided by world size (upstream's get_all_reduce_mean, without the silent except)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # all set: a launcher started us
LAUNCHER_VARS = LAUNCHER_ENV + ("LOCAL_RANK", "LOCAL_SIZE")  # everything a launcher sets for a rank


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> torch.device:
    """Join the launcher's process group, or make a one-process group when started as ``python main.py``.

    Returns this rank's device. Upstream crashed without the launcher; here a plain start behaves as a
    launcher run with one rank (same sampler, same maths).
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if not all(name in os.environ for name in LAUNCHER_ENV):
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(_free_port()),
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            LOCAL_SIZE="1",
        )
    local_rank = get_local_rank()  # the launcher's --local_rank flag carries the same value
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
        device = torch.device(accelerator.device_name(), local_rank)
    else:
        device = torch.device("cpu")
    if not is_distributed():
        deepspeed.init_distributed()
        if accelerator.device_name() == "cpu":
            atexit.register(
                remove_shm_buffer, os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], get_rank()
            )
    return device


SHM_BUFFER_GLOB = "/dev/shm/deepspeed_allreduce_buffer_*_{addr}_{port}_{rank}"


def remove_shm_buffer(addr: str, port: str, rank: int) -> None:
    """Delete this rank's DeepSpeed CPU all-reduce buffer (~70 MB in /dev/shm) that DeepSpeed never removes.

    Unlinking is safe while other ranks still have it mapped; without this every CPU run leaks the file.
    """
    for path in glob.glob(SHM_BUFFER_GLOB.format(addr=addr, port=port, rank=rank)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
