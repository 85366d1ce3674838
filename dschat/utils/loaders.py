"""Step-1 DataLoaders: upstream's sampling and tensors by default where they matter, faster batching otherwise."""

from __future__ import annotations

import itertools
import logging

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from dschat.config import BatchConfig, LoraConfig, TrainConfig
from dschat.errors import DschatError
from dschat.utils import dist
from dschat.utils.data.batching import FlatCollator, LengthGroupedSampler, PackedCollator, PackedDataset
from dschat.utils.data.collate import SFTCollator
from dschat.utils.model.model_utils import TORCH_DTYPES, position_limit
from dschat.utils.model.patches import active_dropout

logger = logging.getLogger(__name__)

VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3")


# Model types whose attention takes a 4-D block mask with restarted positions (the packed path; tested on
# OPT, Llama and GPT-2, the others share transformers' masking code): ``auto`` lays their batches out flat.
FLAT_MODEL_TYPES = frozenset(
    "gemma gpt2 llama mistral olmo olmo2 opt phi phi3 qwen2 qwen3 smollm3 stablelm starcoder2".split()
)


def resolve_padding(batch: BatchConfig, lora: LoraConfig, model) -> str:
    """``max_length`` (upstream's tensors), ``longest`` (dynamic) or ``free`` (each micro-batch's samples packed
    into rows of up to --max_seq_len);
    ``auto`` is ``free`` for the model types above, ``longest`` for the rest.

    Dynamic and flat batches give the same loss and gradients with less compute. The one thing they change is
    which random numbers dropout draws (its masks cover the whole tensor), so with dropout on, a seeded run
    matches a seeded upstream run step for step only with upstream's shapes: ``--pad_to_max_len``.
    """
    if batch.padding != "auto":
        return batch.padding
    flat = getattr(model.config, "model_type", None) in FLAT_MODEL_TYPES
    dropout = active_dropout(model)
    if lora.enabled and lora.lora_dropout > 0:
        dropout.append(f"lora_dropout={lora.lora_dropout}")
    note = (
        f"; dropout is active ({', '.join(dropout[:4])}): its masks differ from upstream's, --pad_to_max_len "
        "reproduces a seeded upstream run step for step"
        if dropout
        else ""
    )
    if flat:
        logger.info(
            "padding=free (auto: each micro-batch packed into rows, next to no padding, the same maths%s)",
            note,
        )
        return "free"
    logger.info("padding=longest (auto: dynamic padding, the same maths with less compute%s)", note)
    return "longest"


# Models whose learned positions follow the attention mask: padding never reaches past the real tokens'.
MASK_POSITIONED = ("opt",)


def check_padded_positions(model, max_seq_len: int, model_path: str) -> None:
    """Rows padded or packed to --max_seq_len must fit a learned position table that counts padding too."""
    limit = position_limit(model_path)
    if limit is None or getattr(model.config, "model_type", None) in MASK_POSITIONED:
        return
    key, positions = limit
    if max_seq_len > positions:
        raise DschatError(
            f"rows padded or packed to --max_seq_len {max_seq_len} do not fit the model's {positions} positions "
            f"({key} in {model_path}/config.json): use --max_seq_len {positions} or less, or --padding longest "
            "without --packing"
        )


def train_sampler(dataset, batch: BatchConfig, seed: int):
    """Upstream's DistributedSampler (shuffle, seed 0), or length-grouped batches with ``--group_by_length``."""
    if not batch.group_by_length:
        return DistributedSampler(dataset)
    if isinstance(dataset, PackedDataset):
        lengths = torch.tensor([len(dataset[i]["input_ids"]) for i in range(len(dataset))]).numpy()
    else:
        lengths = dataset.samples.lengths()
    return LengthGroupedSampler(
        lengths, batch.per_device_train_batch_size, dist.get_world_size(), dist.get_rank(), seed=seed
    )


def batch_shape(model, cfg: TrainConfig) -> str:
    """This run's padding (see ``resolve_padding``), checked against the model's positions before data is built."""
    padding = resolve_padding(cfg.batch, cfg.lora, model)
    if padding == "max_length" or cfg.batch.packing:
        check_padded_positions(model, cfg.data.max_seq_len, cfg.model.model_name_or_path)
    return padding


def create_dataloaders(train_dataset, eval_dataset, tokenizer, model, cfg: TrainConfig, padding: str):
    """Train and eval loaders for this run (eval is never packed, so its perplexity stays comparable)."""
    batch, data = cfg.batch, cfg.data
    collator = SFTCollator(
        tokenizer.pad_token_id,
        data.max_seq_len,
        pad_to_max_len=padding == "max_length",
        train_on_prompt=data.train_on_prompt,
    )
    train_collator = collator
    varlen = getattr(model.config, "_attn_implementation", None) in VARLEN_ATTENTION
    packed_collator = PackedCollator(
        tokenizer.pad_token_id, data.train_on_prompt, varlen, TORCH_DTYPES[cfg.engine.dtype]
    )
    if padding == "free" and not batch.packing:
        train_collator = FlatCollator(packed_collator, data.max_seq_len)
    if batch.packing:
        train_dataset = PackedDataset(train_dataset, data.max_seq_len, data.seed)
        train_collator = packed_collator
        logger.info(
            "packing: %d samples in %d rows of up to %d tokens (best-fit decreasing, %.1f%% full)",
            len(train_dataset.dataset),
            len(train_dataset),
            data.max_seq_len,
            100 * train_dataset.fill_rate,
        )
    train_loader = DataLoader(
        train_dataset,
        collate_fn=train_collator,
        sampler=train_sampler(train_dataset, batch, data.seed),
        batch_size=batch.per_device_train_batch_size,
    )
    eval_loader = DataLoader(
        eval_dataset,
        collate_fn=collator,
        sampler=DistributedSampler(eval_dataset),
        batch_size=batch.per_device_eval_batch_size,
    )
    return train_loader, eval_loader


class SkipSampler(Sampler[int]):
    """The wrapped sampler's indices after the first ``skip`` (a resumed epoch continues where it stopped)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)


def skip_batches(train_loader: DataLoader, batches: int) -> DataLoader:
    """The same loader without its first ``batches`` micro-batches (the rest of a resumed epoch)."""
    return DataLoader(
        train_loader.dataset,
        batch_size=train_loader.batch_size,
        collate_fn=train_loader.collate_fn,
        sampler=SkipSampler(train_loader.sampler, batches * train_loader.batch_size),
    )
