"""``--clean_data``: one source's train and eval records through dschat.clean's rules, before the split.

Unchanged records stay the adapter's own samples, so they render exactly as without cleaning; a record a
repair changed is rendered from its cleaned messages. Data with nothing to clean keeps every sample as it was:
the same tokens, the same losses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dschat.config import DataConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanedSample:
    """A record whose text a repair rule changed: rendered from these messages instead of the adapter's text."""

    messages: list[dict]


def clean_source(raw, train_rows, eval_rows, data: DataConfig, tokenizer) -> tuple[list, list]:
    """The kept train and eval samples of one source (adapter samples, or CleanedSample where repaired)."""
    from dschat.clean import clean_conversations

    train = [raw.get_conversation(sample) for sample in train_rows]
    evaluation = [raw.get_conversation(sample) for sample in eval_rows]
    result = clean_conversations(train, evaluation, data.clean, tokenizer, data.data_output_path, data.seed)
    logger.info("--clean_data %s:\n%s", raw.dataset_name, result.report.table())
    if result.unchanged:
        return list(train_rows), list(eval_rows)
    return (
        _kept(train_rows, result.train_keep, result.train_changed, result.train),
        _kept(eval_rows, result.eval_keep, result.eval_changed, result.eval),
    )


def _kept(rows, keep: list[int], changed: list[int], cleaned: list[list[dict]]) -> list:
    repaired = set(changed)
    return [
        CleanedSample(messages) if index in repaired else rows[index]
        for index, messages in zip(keep, cleaned)
    ]
