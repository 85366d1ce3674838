"""Thin helpers over torch.distributed that also work when no process group exists."""

from __future__ import annotations

import atexit
import contextlib
import datetime
import glob
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from dschat.errors import QUOTE_CHARS, DschatError

T = TypeVar("T")


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


def decided_by_rank0(decide: Callable[..., T], *args) -> T:
    """``decide(*args)`` run on rank 0 only; every rank returns its result or raises its DschatError.

    For choices every rank must share that cost I/O (which checkpoint to load, verified once, not per rank).
    """
    result, message = None, None
    if get_rank() == 0:
        try:
            result = decide(*args)
        except DschatError as err:
            message = str(err)
    if is_distributed():
        shared = [result, message]
        dist.broadcast_object_list(shared, src=0)
        result, message = shared
    if message is not None:
        raise DschatError(message)
    return result


HEARTBEAT_SECONDS = 1.0  # each rank bumps its counter in the rendezvous store this often
_heartbeat = None
COMM_FAILURE_MARKS = ("gloo", "nccl", "NCCL", "Connection closed by peer", "Connection reset", "Timed out")


class Heartbeat:
    """A counter per rank in the launcher's rendezvous store, bumped by a daemon thread.

    After a failed collective rank 0 reads the counters twice, a few beats apart: a rank whose counter did not
    move is dead or frozen, one whose counter moved is alive (perhaps stuck waiting like us). Counters, not
    clocks: nodes' clocks may disagree. The thread uses its own store client, never the main thread's.
    """

    def __init__(self):
        self.rank, self.world_size = get_rank(), get_world_size()
        self.store = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            self.world_size,
            is_master=False,
            timeout=datetime.timedelta(seconds=10 * HEARTBEAT_SECONDS),
            wait_for_workers=False,
        )
        self.done = threading.Event()
        threading.Thread(target=self.beat, name="dschat-heartbeat", daemon=True).start()

    def beat(self) -> None:
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                self.store.add(f"dschat/heartbeat/{self.rank}", 1)
            except RuntimeError:  # the store (rank 0's process) is gone: nothing left to tell
                return

    def silent_ranks(self) -> list[int] | None:
        """Ranks whose heartbeat stopped (None: the store itself cannot be reached)."""
        try:
            keys = [f"dschat/heartbeat/{rank}" for rank in range(self.world_size)]
            before = [int(value) for value in self.store.multi_get(keys)]
            time.sleep(3 * HEARTBEAT_SECONDS)
            after = [int(value) for value in self.store.multi_get(keys)]
        except RuntimeError:
            return None
        return [rank for rank in range(self.world_size) if before[rank] == after[rank]]


def start_heartbeat() -> None:
    global _heartbeat
    if get_world_size() > 1 and _heartbeat is None:
        _heartbeat = Heartbeat()
        _heartbeat.store.add(f"dschat/heartbeat/{get_rank()}", 1)  # the key exists before anyone reads it


@contextlib.contextmanager
def collective_faults(timeout_minutes: float):
    """Turn a failed or timed-out collective (a rank died or hangs) into one line naming the silent ranks."""
    try:
        yield
    except RuntimeError as err:
        text = str(err)
        if get_world_size() == 1 or not (
            isinstance(err, dist.DistError) or any(mark in text for mark in COMM_FAILURE_MARKS)
        ):
            raise
        # The launcher stops every rank as soon as one dies: finish the roll call and the report first
        # (SIGKILL, 30 s later, still ends this process).
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            silent = _heartbeat.silent_ranks() if _heartbeat is not None else []
        finally:
            signal.signal(signal.SIGTERM, previous)
        who = (
            "rank 0, which holds the rendezvous store, is gone (see its log lines)"
            if silent is None
            else f"rank(s) {', '.join(map(str, silent))} stopped responding (died or frozen: see their log lines)"
            if silent
            else "every rank is still alive, so one is stuck or the network failed (see the ranks' log lines)"
        )
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise DschatError(
            f"rank {get_rank()}: a collective failed or waited longer than --dist_timeout {timeout_minutes:g} "
            f"min ({first[:QUOTE_CHARS]}); {who}. The last checkpoint is kept: fix the cause and continue "
            "with --resume; if a rank was only slow (a long data build or save), raise --dist_timeout"
        ) from None


LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # all set: a launcher started us
LAUNCHER_VARS = LAUNCHER_ENV + ("LOCAL_RANK", "LOCAL_SIZE")  # everything a launcher sets for a rank


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(timeout_minutes: float = 10.0) -> torch.device:
    """Join the launcher's process group, or make a one-process group when started as ``python main.py``.

    Returns this rank's device. Upstream crashed without the launcher; here a plain start behaves as a
    launcher run with one rank (same sampler, same maths). A collective waits at most ``timeout_minutes``
    for the other ranks (then ``collective_faults`` says which did not answer).
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
        timeout = datetime.timedelta(minutes=timeout_minutes)
        # DeepSpeed makes its data-parallel groups without a timeout, so they would take torch's default
        # (30 min for gloo): make the default this run's, for every group created from here on.
        c10d.default_pg_timeout = timeout
        if isinstance(c10d.default_pg_nccl_timeout, datetime.timedelta):
            c10d.default_pg_nccl_timeout = timeout
        deepspeed.init_distributed(timeout=timeout)
        start_heartbeat()
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
