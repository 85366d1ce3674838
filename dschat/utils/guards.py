"""What stops a run early: a clean stop on SIGTERM/SIGINT, and the NaN/inf loss guard, agreed across ranks."""

from __future__ import annotations

import logging
import signal

import torch

from dschat.errors import DschatError
from dschat.utils import checkpoint, dist

logger = logging.getLogger(__name__)


class StopRequest:
    """SIGTERM/SIGINT ask for a clean stop after the current step; a second signal acts immediately."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        logger.warning(
            "received signal %d: finishing this step, then saving a checkpoint and exiting", signum
        )
        self.requested = True
        signal.signal(signum, self.previous.get(signum) or signal.SIG_DFL)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler or signal.SIG_DFL)


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
    kept = checkpoint.latest_checkpoint(checkpoint.checkpoints_root(output_dir)) if output_dir else None
    raise DschatError(
        f"the loss became NaN/inf at {where}; nothing new was saved"
        + (f", the last good checkpoint is {kept}" if kept else "")
        + ". Lower --learning_rate, add --num_warmup_steps, check the data, or allow skipping with --max_bad_steps N"
    )
