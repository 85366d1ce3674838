"""Upstream's phase partitioning (``--data_split``) and shuffles, with checked index-file caching."""

from __future__ import annotations

import logging
import os

import numpy as np

from dschat.errors import DschatError
from dschat.utils import atomic

logger = logging.getLogger(__name__)

NUM_PHASES = 3
SFT_ONLY_SPLIT = "10,0,0"
TRAIN_EVAL_SPLIT = "9,1"


def parse_data_split(data_split: str) -> list[float]:
    """Parse a user's ``--data_split`` (three non-negative numbers, phase 1 > 0) or raise DschatError."""
    fields = data_split.split(",")
    hint = "Expected three comma-separated non-negative weights for phases 1,2,3, e.g. 2,4,4 or 10,0,0."
    if len(fields) != NUM_PHASES:
        raise DschatError(f"--data_split {data_split!r} has {len(fields)} field(s). {hint}")
    try:
        weights = [float(field) for field in fields]
    except ValueError:
        raise DschatError(f"--data_split {data_split!r} is not numeric. {hint}") from None
    if any(w < 0 or not np.isfinite(w) for w in weights) or sum(weights) == 0:
        raise DschatError(f"--data_split {data_split!r} has a negative or all-zero weight. {hint}")
    if weights[0] == 0:
        raise DschatError(f"--data_split {data_split!r} gives phase 1 (SFT) no data. {hint}")
    return weights


def data_weights_problem(weights: list[float] | tuple[float, ...] | None, num_paths: int) -> str | None:
    """Why ``--data_weights`` cannot weight the blend of ``num_paths`` datasets, or None (also when unset)."""
    if weights is None:
        return None
    hint = "Fix: give one finite weight >= 0 per --data_path entry, not all zero (e.g. 3 1), or leave the flag out."
    if len(weights) != num_paths:
        return f"--data_weights has {len(weights)} values for {num_paths} --data_path entries. {hint}"
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) == 0:
        return f"--data_weights {' '.join(str(w) for w in weights)} has a negative, non-finite or all-zero weight. {hint}"
    return None


def split_boundaries(data_split: str, num_samples: int) -> list[int]:
    """Partition boundaries exactly as upstream: per-part rounding, the error absorbed by part 1."""
    weights = [float(field) for field in data_split.split(",")]
    total = sum(weights)
    bounds = [0]
    for weight in weights:
        bounds.append(bounds[-1] + int(round(weight / total * float(num_samples))))
    excess = bounds[-1] - num_samples
    bounds = [bounds[0]] + [b - excess for b in bounds[1:]]
    assert bounds[-1] == num_samples
    return bounds


def shuffle_indices(seed: int, size: int) -> np.ndarray:
    """Upstream's permutation of ``range(size)``: numpy RandomState(seed), shuffled in place."""
    dtype = np.uint32 if size < np.iinfo(np.uint32).max - 1 else np.int64
    indices = np.arange(start=0, stop=size, step=1, dtype=dtype)
    np.random.RandomState(seed=seed).shuffle(indices)
    return indices


def split_index_path(
    output_path: str, name_clean: str, seed: int, split_name: str, data_split: str, index: int
) -> str:
    """Upstream's cache file name for one partition's index list."""
    return os.path.join(output_path, f"{name_clean}_seed{seed}_{split_name}_{data_split}_{index}.npy")


def _cached_partitions(paths: list[str], num_samples: int) -> list[np.ndarray] | None:
    """Load every partition file, or None if any is missing or they do not cover ``num_samples``."""
    parts = []
    for path in paths:
        if not os.path.isfile(path):
            return None
        try:
            parts.append(np.load(path, allow_pickle=False))
        except (ValueError, OSError):
            logger.warning("split index file %s is unreadable; rebuilding it", path)
            return None
    total = sum(len(part) for part in parts)
    if total != num_samples or any(len(p) and int(p.max()) >= num_samples for p in parts):
        logger.warning(
            "split index files %s cover %d samples but the dataset now has %d; rebuilding them",
            paths[0],
            total,
            num_samples,
        )
        return None
    return parts


def split_indices(
    output_path: str,
    name_clean: str,
    seed: int,
    split_name: str,
    data_split: str,
    split_index: int,
    num_samples: int,
    rebuild: bool = False,
) -> list[int]:
    """Indices of partition ``split_index`` of a dataset of ``num_samples`` rows, cached as upstream.

    Unlike upstream, cached files that no longer match the dataset size are rebuilt, not reused.
    """
    count = len(data_split.split(","))
    paths = [split_index_path(output_path, name_clean, seed, split_name, data_split, i) for i in range(count)]
    parts = None if rebuild else _cached_partitions(paths, num_samples)
    if parts is None:
        os.makedirs(output_path, exist_ok=True)
        bounds = split_boundaries(data_split, num_samples)
        permutation = shuffle_indices(seed, num_samples)
        parts = [permutation[bounds[i] : bounds[i + 1]] for i in range(count)]
        for path, part in zip(paths, parts):
            atomic.write_with(path, lambda temp, part=part: np.save(temp, part, allow_pickle=False))
    return parts[split_index].tolist()


TRAIN_EVAL = "train_eval"  # split name of the cached 90/10 carving index files


def carve_train_eval(output_path: str, name_clean: str, seed: int, train, part: int):
    """Part 0 (90%) or 1 (10%) of a train split, for sources without an eval split (upstream's carving)."""
    indices = split_indices(output_path, name_clean, seed, TRAIN_EVAL, TRAIN_EVAL_SPLIT, part, len(train))
    return train.select(indices)
