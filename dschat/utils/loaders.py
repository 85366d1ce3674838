"""Step-1 DataLoaders: upstream's sampling and tensors by default where they matter, faster batching otherwise."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader, DistributedSampler

from dschat.utils import dist
from dschat.utils.data.batching import LengthGroupedSampler, PackedCollator, PackedDataset
from dschat.utils.data.collate import SFTCollator
from dschat.utils.model.model_utils import active_dropout

logger = logging.getLogger(__name__)

PADDING_CHOICES = ("auto", "longest", "max_length")
MASK_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


def resolve_padding(args, model) -> str:
    """``max_length`` (upstream's tensors) or ``longest`` (dynamic). ``auto`` picks dynamic unless dropout is on.

    Dynamic padding gives the same loss, but dropout draws its random masks over the whole padded tensor, so
    with dropout only upstream's shapes reproduce a seeded upstream run step for step.
    """
    if args.pad_to_max_len:
        return "max_length"
    if args.padding != "auto":
        return args.padding
    dropout = active_dropout(model)
    if args.lora_dim > 0 and args.lora_dropout > 0:
        dropout.append(f"lora_dropout={args.lora_dropout}")
    if dropout:
        logger.info(
            "padding=max_length (auto: dropout is active: %s; pass --padding longest or --dropout 0.0 for "
            "dynamic padding, which is faster but draws different dropout masks than upstream)",
            ", ".join(dropout[:4]),
        )
        return "max_length"
    logger.info(
        "padding=longest (auto: no dropout, so dynamic padding gives upstream's losses with less compute)"
    )
    return "longest"


def train_sampler(dataset, args):
    """Upstream's DistributedSampler (shuffle, seed 0), or length-grouped batches with ``--group_by_length``."""
    if not args.group_by_length:
        return DistributedSampler(dataset)
    if isinstance(dataset, PackedDataset):
        lengths = torch.tensor([len(dataset[i]["input_ids"]) for i in range(len(dataset))]).numpy()
    else:
        lengths = dataset.samples.lengths()
    return LengthGroupedSampler(lengths, args.per_device_train_batch_size, dist.get_world_size(), dist.get_rank(),
                                seed=args.seed)  # fmt: skip


def create_dataloaders(train_dataset, eval_dataset, tokenizer, model, args):
    """Train and eval loaders for these flags (eval is never packed, so its perplexity stays comparable)."""
    padding = resolve_padding(args, model)
    collator = SFTCollator(tokenizer.pad_token_id, args.max_seq_len, pad_to_max_len=padding == "max_length",
                           train_on_prompt=args.train_on_prompt)  # fmt: skip
    train_collator = collator
    if args.packing:
        train_dataset = PackedDataset(train_dataset, args.max_seq_len)
        varlen = getattr(model.config, "_attn_implementation", None) in VARLEN_ATTENTION
        train_collator = PackedCollator(
            tokenizer.pad_token_id, args.train_on_prompt, varlen, MASK_DTYPES[args.dtype]
        )
        logger.info("packing: %d samples in %d rows of up to %d tokens", len(train_dataset.dataset),
                    len(train_dataset), args.max_seq_len)  # fmt: skip
    train_loader = DataLoader(train_dataset, collate_fn=train_collator, sampler=train_sampler(train_dataset, args),
                              batch_size=args.per_device_train_batch_size)  # fmt: skip
    eval_loader = DataLoader(eval_dataset, collate_fn=collator, sampler=DistributedSampler(eval_dataset),
                             batch_size=args.per_device_eval_batch_size)  # fmt: skip
    return train_loader, eval_loader
