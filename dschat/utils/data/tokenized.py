"""Tokenised samples stored as flat arrays: compact in memory, cached without pickle."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch

from dschat.utils import atomic


@dataclass
class TokenizedSamples:
    """Variable-length token sequences: sample i is ``input_ids[offsets[i]:offsets[i+1]]``.

    ``answer_mask`` marks tokens that belong to assistant answers (1) versus prompt text (0), so answer-only
    loss can be computed without re-tokenising.
    """

    input_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    answer_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))

    @classmethod
    def from_lists(cls, ids: list[list[int]], masks: list[list[int]]) -> TokenizedSamples:
        lengths = np.array([len(seq) for seq in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat_ids = np.fromiter((t for seq in ids for t in seq), dtype=np.int64, count=int(offsets[-1]))
        flat_mask = np.fromiter((m for seq in masks for m in seq), dtype=np.uint8, count=int(offsets[-1]))
        return cls(flat_ids, flat_mask, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.offsets[index], self.offsets[index + 1]
        return self.input_ids[start:end], self.answer_mask[start:end]

    def select(self, order: list[int] | np.ndarray) -> TokenizedSamples:
        """A new set holding samples ``order`` (repeats allowed), in that order."""
        pieces = [self.sample(int(i)) for i in order]
        return TokenizedSamples.from_lists([p[0] for p in pieces], [p[1] for p in pieces])

    @staticmethod
    def concat(parts: list[TokenizedSamples]) -> TokenizedSamples:
        if not parts:
            return TokenizedSamples()
        ids = np.concatenate([p.input_ids for p in parts])
        mask = np.concatenate([p.answer_mask for p in parts])
        offsets, base = [np.zeros(1, np.int64)], 0
        for part in parts:
            offsets.append(part.offsets[1:] + base)
            base += int(part.offsets[-1])
        return TokenizedSamples(ids, mask, np.concatenate(offsets))

    def digest(self) -> str:
        """The samples' identity (tokens, answer masks, boundaries): equal digests, equal training data."""
        digest = hashlib.sha256()
        for array in (self.offsets, self.input_ids, self.answer_mask):
            array = np.ascontiguousarray(array)  # no copy for arrays as built or loaded
            digest.update(array.dtype.str.encode())
            digest.update(array.data)
        return digest.hexdigest()

    def save(self, path: str, meta: dict) -> None:
        """Write to ``path`` atomically (temp name, then rename), with ``meta`` as JSON inside."""
        with atomic.open_atomic(path, "wb") as handle:
            np.savez(
                handle,
                input_ids=self.input_ids,
                answer_mask=self.answer_mask,
                offsets=self.offsets,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            )

    @classmethod
    def load(cls, path: str) -> tuple[TokenizedSamples, dict]:
        """Read a file written by ``save`` (no pickle involved)."""
        with np.load(path, allow_pickle=False) as data:
            samples = cls(data["input_ids"], data["answer_mask"], data["offsets"])
            meta = json.loads(data["meta"].tobytes().decode())
        return samples, meta


class PromptDataset(torch.utils.data.Dataset):
    """Phase-1 dataset: item i is the unpadded ``input_ids`` and ``answer_mask`` of sample i."""

    def __init__(self, samples: TokenizedSamples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids, mask = self.samples.sample(index)
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "answer_mask": torch.from_numpy(mask.astype(bool)),
        }
