"""Records to clean, read through dschat's own loaders: ``--data_path`` adapters and benchmark files.

Nothing here parses a data file: registry datasets, local copies and local json/jsonl/parquet files come from
``raw_datasets.get_raw_dataset`` (so bad input gets the loaders' errors) and each sample's conversation from its
adapter's ``get_conversation``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dschat.clean.text import preview
from dschat.errors import DschatError

logger = logging.getLogger(__name__)

Item = tuple[
    str, "list[dict] | None", "str | None"
]  # (where, conversation or None, why the loader skipped it)
ADAPTER_SKIPPED = "the adapter skips it (a prompt or answer is missing)"
TEXT_SUFFIXES = (".txt",)
RECORD_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass
class SplitSource:
    """One split of one ``--data_path`` entry: its size and a way to iterate its records."""

    name: str
    split: str
    raw: object
    data: object

    def __len__(self) -> int:
        return len(self.data)

    def items(self) -> Iterator[Item]:
        """(where, conversation, skip reason) per sample, in order."""
        drop_reason = getattr(self.raw, "drop_reason", None)
        for row, sample in enumerate(self.data):
            messages = self.raw.get_conversation(sample)
            where = sample.get("source") if isinstance(sample, dict) else None
            where = where or f"{self.name} {self.split} row {row + 1}"
            skipped = None
            if messages is None:
                skipped = (drop_reason(sample) if drop_reason else None) or ADAPTER_SKIPPED
                prompt = self.raw.get_prompt(sample)
                skipped += f" (prompt: {preview(prompt, 100)!r})" if prompt else ""
            yield where, messages, skipped


def open_splits(
    data_paths: list[str], output_path: str, seed: int
) -> tuple[list[SplitSource], list[SplitSource]]:
    """The train and eval splits of every ``--data_path`` entry (eval carved 90/10 where a source has none)."""
    from dschat.utils.data.raw_datasets import get_raw_dataset

    trains, evals = [], []
    for name in data_paths:
        raw = get_raw_dataset(name, output_path, seed, 0)
        trains.append(SplitSource(name, "train", raw, raw.get_train_data()))
        evals.append(SplitSource(name, "eval", raw, raw.get_eval_data()))
    return trains, evals


def benchmark_texts(
    paths: tuple[str, ...] | list[str], output_path: str, seed: int
) -> Iterator[tuple[str, str, bool]]:
    """(text, where, is_prompt) for every item of the ``--decontaminate_against`` files.

    ``.txt``: one item per non-empty line; ``.json``/``.jsonl``/``.parquet``: every string field of every record
    (benchmarks come in any shape; the records are read by dschat's reader, with its errors); anything else is
    opened like ``--data_path`` and every split's conversations are used.
    """
    from dschat.utils.data.local_records import read_records

    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix in TEXT_SUFFIXES + RECORD_SUFFIXES and not Path(path).is_file():
            raise DschatError(f"--decontaminate_against {path!r} does not exist. Fix: check the path.")
        if suffix in TEXT_SUFFIXES:
            yield from _text_lines(path)
        elif suffix in RECORD_SUFFIXES:
            for where, record in read_records(Path(path)):
                for text in _strings(record):
                    yield text, where, True
        else:
            trains, evals = open_splits([path], output_path, seed)
            for source in trains + evals:
                for where, messages, _ in source.items():
                    for message in messages or []:
                        if message["role"] != "system":
                            yield message["content"], where, message["role"] == "user"


def _text_lines(path: str) -> Iterator[tuple[str, str, bool]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DschatError(
            f"--decontaminate_against {path} is not UTF-8 text ({err}). Fix: re-save it as UTF-8."
        ) from None
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield line, f"{path} line {n}", True


def _strings(value) -> Iterator[str]:
    """Every non-empty string inside a JSON value, in order (a stack, not recursion: records may nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item.strip():
                yield item
        elif isinstance(item, (dict, list)):
            children = item.values() if isinstance(item, dict) else item
            stack.extend(reversed(list(children)))
