"""The in-memory entry point: clean lists of conversations, get back which to keep and their repaired text."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dschat.clean.config import CleanConfig
from dschat.clean.pipeline import MemorySpool, clean_train_and_eval
from dschat.clean.report import CleanReport
from dschat.clean.sources import ADAPTER_SKIPPED

Conversation = list[dict]


@dataclass
class CleanResult:
    """Kept indices per split (ascending), their cleaned conversations (same order), the changed ones, the report."""

    train_keep: list[int]
    eval_keep: list[int]
    train: list[Conversation]
    eval: list[Conversation]
    train_changed: list[int]  # kept indices whose text a repair or the PII scrub changed
    eval_changed: list[int]
    report: CleanReport

    @property
    def unchanged(self) -> bool:
        """Nothing removed and nothing changed: the caller can keep its original samples (same cache, same losses)."""
        kept_all = all(
            keep == list(range(n))
            for keep, n in (
                (self.train_keep, self.report.inputs["train"]),
                (self.eval_keep, self.report.inputs["eval"]),
            )
        )
        return kept_all and not self.train_changed and not self.eval_changed


def _items(split: str, conversations: Sequence[Conversation | None]):
    for i, messages in enumerate(conversations):
        yield f"{split} record {i + 1}", messages, None if messages is not None else ADAPTER_SKIPPED


def clean_conversations(
    train: Sequence[Conversation | None],
    eval: Sequence[Conversation | None] = (),
    config: CleanConfig | None = None,
    tokenizer=None,
    data_output_path: str = "/tmp/data_files/",
    seed: int = 1234,
) -> CleanResult:
    """Apply every enabled rule to ``train`` and ``eval`` (lists of ``{role, content}`` message lists).

    A ``None`` entry is a sample the adapter skipped (counted, never kept). ``tokenizer`` enables the token-length
    rules. ``data_output_path`` and ``seed`` are only used to open ``--decontaminate_against`` dataset names.
    """
    config = config or CleanConfig()
    config.validate()
    kept: dict[str, list[Conversation]] = {"train": [], "eval": []}
    report, train_result, eval_result = clean_train_and_eval(
        (_items("train", train), len(train)),
        (_items("eval", eval), len(eval)),
        config,
        tokenizer,
        lambda split: MemorySpool(),
        lambda index, where, messages: kept["train"].append(messages),
        lambda index, where, messages: kept["eval"].append(messages),
        data_output_path,
        seed,
    )
    return CleanResult(
        train_result.kept,
        eval_result.kept,
        kept["train"],
        kept["eval"],
        sorted(train_result.changed),
        sorted(eval_result.changed),
        report,
    )
