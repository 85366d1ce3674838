"""Faster batches with the same maths: length-grouped sampling and packing (several samples per row)."""

from __future__ import annotations

import bisect
import math

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dschat.utils.data.collate import IGNORE_INDEX, REAL_TOKENS
from dschat.utils.data.tokenized import PromptDataset

MEGABATCH_FACTOR = 50  # global batches per sorted megabatch: similar lengths, still well mixed


class LengthGroupedSampler(Sampler[int]):
    """This rank's indices, drawn so every global batch holds samples of similar length.

    Per epoch: a seeded permutation is cut into megabatches of ``MEGABATCH_FACTOR`` global batches, each sorted
    by length; the global batches are shuffled, and each rank takes its ``batch_size`` slice of every one. Like
    DistributedSampler, the data is padded (by repetition) to fill the last global batch.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, num_replicas: int, rank: int, seed: int = 0):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.num_replicas, self.rank, self.seed = batch_size, num_replicas, rank, seed
        self.epoch = 0
        self.global_batch = batch_size * num_replicas
        self.num_global_batches = math.ceil(len(self.lengths) / self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_global_batches * self.batch_size

    def __iter__(self):
        rng = np.random.RandomState(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths))
        total = self.num_global_batches * self.global_batch
        order = np.concatenate([order, order[: total - len(order)]]) if total > len(order) else order
        mega = self.global_batch * MEGABATCH_FACTOR
        chunks = [order[i : i + mega] for i in range(0, total, mega)]
        order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = order.reshape(self.num_global_batches, self.global_batch)
        batches = batches[rng.permutation(self.num_global_batches)]
        mine = batches[:, self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return iter(mine.reshape(-1).tolist())


PACKING_WINDOW = 1024  # samples packed together: enough to fill rows, small enough to keep the order random


def pack_rows(lengths: np.ndarray, max_seq_len: int) -> list[list[int]]:
    """Best-fit decreasing: longest sample first, each into the open row it fills most tightly (a new row when
    none has room). Returns rows of indices into ``lengths``."""
    free: list[tuple[int, int]] = []  # (room left, row), kept sorted: bisect finds the tightest fit
    rows: list[list[int]] = []
    for index in np.argsort(-lengths, kind="stable").tolist():
        length = int(lengths[index])
        at = bisect.bisect_left(free, (length, -1))
        if at == len(free):
            rows.append([index])
            room, row = max_seq_len - length, len(rows) - 1
        else:
            room, row = free.pop(at)
            rows[row].append(index)
            room -= length
        if room > 0:
            bisect.insort(free, (room, row))
    return rows


def pack_windows(
    lengths: np.ndarray, max_seq_len: int, seed: int, window: int = PACKING_WINDOW
) -> list[list[int]]:
    """Rows for a whole dataset: a seeded shuffle cut into windows of ``window`` samples, each packed
    best-fit decreasing, its rows in a seeded random order (the sampler shuffles them again per epoch)."""
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(lengths))
    rows = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        packed = [chunk[row].tolist() for row in pack_rows(lengths[chunk], max_seq_len)]
        rows += [packed[i] for i in rng.permutation(len(packed))]
    return rows


class PackedDataset(Dataset):
    """Rows of several concatenated samples; ``seq_lens`` keeps their boundaries for masks and positions.

    The rows are fixed for the run (seeded by ``seed``), so the LR schedule's length and a resumed epoch's
    position are exact; the sampler draws them in a new order every epoch."""

    def __init__(self, dataset: PromptDataset, max_seq_len: int, seed: int = 0):
        self.dataset = dataset
        lengths = np.minimum(dataset.samples.lengths(), max_seq_len)
        self.rows = pack_windows(lengths, max_seq_len, seed)
        self.fill_rate = float(lengths.sum()) / max(len(self.rows) * max_seq_len, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return concat_samples([self.dataset[i] for i in self.rows[index]])


def concat_samples(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One packed row: the samples' tokens end to end, ``seq_lens`` keeping their boundaries."""
    return {
        "input_ids": torch.cat([item["input_ids"] for item in items]),
        "answer_mask": torch.cat([item["answer_mask"] for item in items]),
        "seq_lens": torch.tensor([len(item["input_ids"]) for item in items]),
    }


class PackedCollator:
    """Collate packed rows: positions restart per sample, attention never crosses a boundary.

    With ``varlen_attention`` (flash-attention) only ``position_ids`` are passed and the model finds the
    boundaries itself; otherwise a block-diagonal causal mask (4-D, additive) is built. The first token of
    every sample carries no label, exactly as in an unpacked row, so per-sample losses are unchanged.
    """

    def __init__(
        self,
        pad_token_id: int,
        train_on_prompt: bool = True,
        varlen_attention: bool = False,
        mask_dtype: torch.dtype = torch.float32,
    ):
        self.pad_token_id = pad_token_id
        self.train_on_prompt = train_on_prompt
        self.varlen_attention = varlen_attention
        self.mask_dtype = mask_dtype

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        allowed = torch.zeros((batch, 1, width, width), dtype=torch.bool)
        for b, row in enumerate(rows):
            start = 0
            for length in row["seq_lens"].tolist():
                end = start + length
                ids = row["input_ids"][start:end]
                input_ids[b, start:end] = ids
                trained = (
                    ids
                    if self.train_on_prompt
                    else ids.masked_fill(~row["answer_mask"][start:end], IGNORE_INDEX)
                )
                labels[b, start:end] = trained
                labels[b, start] = IGNORE_INDEX  # no sample predicts the next sample's first token
                position_ids[b, start:end] = torch.arange(length)
                allowed[b, 0, start:end, start:end] = torch.ones(length, length, dtype=torch.bool).tril()
                start = end
            if start < width:  # padding attends to itself only, so no row of the mask is empty
                position_ids[b, start:] = torch.arange(width - start)
                allowed[b, 0, start:, start:] = torch.eye(width - start, dtype=torch.bool)
        real = sum(int(row["seq_lens"].sum()) for row in rows)
        out = {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            REAL_TOKENS: torch.tensor(real),
        }
        if not self.varlen_attention:
            mask = torch.zeros(allowed.shape, dtype=self.mask_dtype)
            out["attention_mask"] = mask.masked_fill(~allowed, torch.finfo(self.mask_dtype).min)
        return out


class FlatCollator:
    """--padding free: a micro-batch's samples packed into as few, evenly filled rows of up to ``max_seq_len``.

    The rows are collated as packed ones (positions restart per sample, attention block-diagonal, each sample's
    first token unlabelled), so the micro-batch holds the same samples, targets and token-mean loss as with
    padding: only the layout differs, and little compute is spent on pad tokens. Rows never exceed
    ``max_seq_len``, so attention costs no more than in a padded batch."""

    def __init__(self, packed: PackedCollator, max_seq_len: int):
        self.packed, self.max_seq_len = packed, max_seq_len

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = np.array([len(item["input_ids"]) for item in items])
        rows = balanced_rows(lengths, self.max_seq_len)
        return self.packed([concat_samples([items[i] for i in row]) for row in rows])


def balanced_rows(lengths: np.ndarray, max_seq_len: int) -> list[list[int]]:
    """As few rows of up to ``max_seq_len`` as hold every sample, filled evenly: longest first, each into the
    emptiest row, so the widest row (the batch's width, which the others are padded to) is as short as can be.
    One more row whenever a sample fits nowhere."""
    count = max(1, math.ceil(int(lengths.sum()) / max_seq_len))
    while True:
        rows, used = [[] for _ in range(count)], [0] * count
        for index in np.argsort(-lengths, kind="stable").tolist():
            emptiest = min(range(count), key=used.__getitem__)
            if used[emptiest] + lengths[index] > max_seq_len and used[emptiest] > 0:
                break
            rows[emptiest].append(index)
            used[emptiest] += int(lengths[index])
        else:
            return [row for row in rows if row]
        count += 1
