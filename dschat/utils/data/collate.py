"""Batch collation: right padding, attention mask and labels (upstream's maths)."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
REAL_TOKENS = "num_real_tokens"  # batch bookkeeping, not a model input: the loop pops it before the forward


class SFTCollator:
    """Pad a list of samples into ``input_ids``, ``attention_mask`` and ``labels`` tensors.

    Labels equal input_ids on real tokens and -100 on padding, as upstream; with ``train_on_prompt=False``
    prompt tokens are -100 too. ``pad_to_max_len`` pads every batch to ``max_seq_len`` (upstream's tensors);
    otherwise a batch is padded to its longest sample, which gives the same loss with less compute.
    """

    def __init__(
        self, pad_token_id: int, max_seq_len: int, pad_to_max_len: bool = True, train_on_prompt: bool = True
    ):
        self.pad_token_id = pad_token_id
        self.max_seq_len = max_seq_len
        self.pad_to_max_len = pad_to_max_len
        self.train_on_prompt = train_on_prompt

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = self.max_seq_len if self.pad_to_max_len else max(len(item["input_ids"]) for item in items)
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            ids = item["input_ids"][:width]
            n = len(ids)
            input_ids[row, :n] = ids
            attention_mask[row, :n] = 1
            trained = ids if self.train_on_prompt else ids.masked_fill(~item["answer_mask"][:n], IGNORE_INDEX)
            labels[row, :n] = trained
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            REAL_TOKENS: attention_mask.sum(),
        }
