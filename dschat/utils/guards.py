"""What stops a run early: a clean stop on SIGTERM/SIGINT, and the NaN/inf loss guard, agreed across ranks."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

import psutil
import torch

from dschat.errors import DschatError
from dschat.utils import checkpoint, dist

logger = logging.getLogger(__name__)


class StopRequest:
    """SIGTERM/SIGINT ask for a clean stop after the current step, however a scheduler delivers them.

    Repeats are absorbed (a scheduler signalling the whole process group reaches a rank twice: directly and
    through DeepSpeed's launcher), so the stop always ends in a complete checkpoint; SIGKILL still aborts.
    When started by the ``deepspeed`` launcher, the launcher's death is a stop request too: otherwise
    killing only the launcher leaves its ranks training as orphans.
    """

    def __init__(self):
        self.requested = False
        self.pid = (
            os.getpid()
        )  # a forked child (a data worker) inherits the handler: it must not absorb signals
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)
        self.watcher = LauncherWatch(self.request_from_watch)

    def handle(self, signum, frame) -> None:
        if os.getpid() != self.pid:  # not the training process: die as a child should
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.requested:
            logger.warning(
                "received signal %d again: already stopping (kill -9 aborts without a checkpoint)", signum
            )
            return
        logger.warning(
            "received signal %d: finishing this step, then saving a checkpoint and exiting", signum
        )
        self.requested = True

    def request_from_watch(self, launcher: str) -> None:
        if not self.requested:
            logger.warning(
                "the launcher (%s) is gone: finishing this step, then saving a checkpoint", launcher
            )
            self.requested = True

    def restore(self) -> None:
        self.watcher.stop()
        for sig, handler in self.previous.items():
            signal.signal(sig, handler or signal.SIG_DFL)


class LauncherWatch:
    """Calls ``on_gone(description)`` once if a ``deepspeed`` launcher process above this rank exits."""

    POLL_SECONDS = 1.0

    def __init__(self, on_gone: Callable[[str], None]):
        self.on_gone = on_gone
        self.done = threading.Event()
        self.launchers = LAUNCHERS_AT_START
        if self.launchers:
            threading.Thread(target=self.run, name="dschat-launcher-watch", daemon=True).start()

    def run(self) -> None:
        while not self.done.wait(self.POLL_SECONDS):
            for launcher in self.launchers:
                if not alive(launcher):
                    self.on_gone(f"pid {launcher.pid}")
                    return

    def stop(self) -> None:
        self.done.set()


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a dead launcher its own parent has not reaped yet is still dead)."""
    try:  # is_running compares start times too: a reused pid is not the launcher
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def deepspeed_ancestors() -> list[psutil.Process]:
    """The consecutive parents of this process that are DeepSpeed's launcher (``deepspeed``, ``launch.py``)."""
    found = []
    try:
        for parent in psutil.Process().parents():
            if not any("deepspeed" in part for part in parent.cmdline()[:4]):  # python [-u] [-m] <launcher>
                break
            found.append(parent)
    except psutil.Error:
        pass
    return found


# Taken at import, early in a rank's life: once a launcher has died this process is re-parented and the
# launcher can no longer be found among its parents.
LAUNCHERS_AT_START = deepspeed_ancestors()


def agree(loss: torch.Tensor, stop_requested: bool) -> tuple[float, bool, bool]:
    """One collective per step: the rank-mean loss, whether any rank's loss is not finite, whether any rank
    must stop. Every rank takes the same decision, so none is left waiting in a collective."""
    finite = bool(torch.isfinite(loss.detach()).all())
    flags = torch.tensor(
        [loss.detach().float().item() if finite else 0.0, float(not finite), float(stop_requested)],
        dtype=torch.float64,
        device=loss.device,
    )
    if dist.is_distributed():
        torch.distributed.all_reduce(flags)
    return flags[0].item() / dist.get_world_size(), flags[1].item() > 0, flags[2].item() > 0


def nonfinite_loss(state, max_bad_steps: int, output_dir: str | None, where: str) -> None:
    """Skip a bounded number of bad steps (``--max_bad_steps``), else stop naming the step and what is kept."""
    state.bad_steps += 1
    if state.bad_steps <= max_bad_steps:
        logger.warning(
            "non-finite loss at %s: skipping it (%d of --max_bad_steps %d)",
            where,
            state.bad_steps,
            max_bad_steps,
        )
        return
    kept = checkpoint.newest_checkpoint(checkpoint.checkpoints_root(output_dir)) if output_dir else None
    raise DschatError(
        f"the loss became NaN/inf at {where}; nothing new was saved"
        + (f", the last good checkpoint is {kept}" if kept else "")
        + ". Lower --learning_rate, add --num_warmup_steps, check the data, or allow skipping with --max_bad_steps N"
    )
