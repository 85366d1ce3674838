"""--loss_normalization token: every loss-bearing token of an optimizer step weighs the same, however the step's
samples are cut into micro-batches and spread over ranks.

Upstream's loss is each micro-batch's own token mean; DeepSpeed's ``engine.backward`` divides it by
gradient_accumulation_steps (``scale_wrt_gas``) and every ZeRO stage averages gradients over the data-parallel
ranks, so an update is the mean of micro-batch means. Here a step's micro-batches are read ahead (collated CPU
tensors: cheap), their loss-bearing tokens counted and summed over ranks with one all-reduce, and micro-batch i
trains on

    loss_i = (sum of its token losses) / N * GAS * W      (N: tokens of the step, all micro-batches and ranks)

DeepSpeed's ``/ GAS`` and ``/ W`` then leave sum over i and ranks of grad(token-loss sum) / N: the gradient of
the step's token mean. The model computes ``sum / N`` itself: ``num_items_in_batch`` is transformers' loss
argument for exactly this (the fp32 loss patch honours it too).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from dschat.errors import DschatError
from dschat.utils import dist
from dschat.utils.data.collate import IGNORE_INDEX


def count_targets(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the causal shift (labels[:, 1:] that are not -100)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def check_model(model: torch.nn.Module) -> None:
    """The model's forward must take transformers' loss kwargs, or its loss would silently stay a mean."""
    accepts = getattr(model, "accepts_loss_kwargs", None)
    if accepts is None:
        parameters = inspect.signature(model.forward).parameters.values()
        accepts = any(p.kind == p.VAR_KEYWORD or p.name == "num_items_in_batch" for p in parameters)
    if not accepts:
        raise DschatError(
            f"--loss_normalization token: {type(model).__name__}.forward takes no num_items_in_batch (transformers' "
            "loss argument), so its loss cannot be normalised by the step's tokens; use --loss_normalization "
            "micro_batch or a model class from transformers"
        )


def backward_scale(engine) -> int:
    """What undoes DeepSpeed's own averaging: ``engine.backward`` divides the loss by gradient_accumulation_steps,
    and the gradient reduction (``allreduce_bucket``, ZeRO's ``average_tensor``) divides by dp_world_size."""
    return engine.gradient_accumulation_steps() * engine.dp_world_size


@dataclass
class TokenWindow:
    """One optimizer step: its micro-batches' loss-bearing tokens (summed over ranks) and where training is."""

    counts: list[int]
    backward_scale: int
    position: int = 0  # the micro-batch being trained (set by ``token_windows``)
    shares: float = 0.0  # sum over the trained micro-batches and ranks of (token-loss sum / num_items)

    @property
    def num_items(self) -> int:
        """The step's loss-bearing tokens (at least 1: a step without any has loss 0, not 0/0)."""
        return max(sum(self.counts), 1)

    @property
    def last(self) -> bool:
        """This micro-batch ends the step (an epoch's last window may be shorter than GAS)."""
        return self.position == len(self.counts) - 1

    def step_loss(self, share: float) -> float:
        """Token-weighted mean loss of the step's micro-batches trained so far (on the last: the whole step's),
        given this micro-batch's ``share``: its loss summed over ranks."""
        self.shares += share
        seen = sum(self.counts[: self.position + 1])
        return self.shares * self.num_items / seen if seen else 0.0


def global_counts(window: list[dict], device: torch.device) -> list[int]:
    """Loss-bearing tokens of each micro-batch of a step, summed over ranks: the step's one collective."""
    counts = torch.tensor([count_targets(b["labels"]) for b in window], dtype=torch.int64, device=device)
    if dist.is_distributed():
        torch.distributed.all_reduce(counts)
    return counts.tolist()


def token_windows(
    batches: Iterable[dict], gradient_accumulation_steps: int, scale: int, device: torch.device
) -> Iterator[tuple[dict, TokenWindow]]:
    """Each micro-batch with its step's window, read ``gradient_accumulation_steps`` ahead so the step's token
    count is known before its first backward. A window never crosses an epoch (every rank has as many
    micro-batches, so windows line up): the epoch's last step is the shorter rest, as the LR schedule counts it.
    """
    batches = iter(batches)
    while micro_batches := list(itertools.islice(batches, gradient_accumulation_steps)):
        window = TokenWindow(global_counts(micro_batches, device), scale)
        for position, batch in enumerate(micro_batches):
            window.position = position
            yield batch, window
