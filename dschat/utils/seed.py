"""Seeding every random number generator a run uses, as upstream does."""

from __future__ import annotations

import random

import numpy as np
import torch
import transformers


def set_random_seed(seed: int | None) -> None:
    """Seed transformers, python, numpy, torch and the accelerator with the same value on every rank."""
    if seed is None:
        return
    from deepspeed.accelerator import get_accelerator

    transformers.set_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)
