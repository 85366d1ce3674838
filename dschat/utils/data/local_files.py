"""Local ``.json``/``.jsonl``/``.parquet`` data for ``--data_path``: find, parse, detect shapes, render upstream text.

Each file's record shape is detected from its first record and every record is normalised to one schema
(``kind``, ``prompt``/``chosen``/``rejected`` strings, ``messages``), so files of different shapes combine.
``{prompt, chosen}`` records render exactly like upstream's ``local/jsonfile``; the others use the upstream
`` Human: ... Assistant: ...`` format from ``prompts``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from pathlib import Path

from dschat.errors import DschatError
from dschat.utils.data import prompts, splits
from dschat.utils.data.base import PromptRawDataset
from dschat.utils.data.local_records import (  # noqa: F401  (EMPTY_*, read_records, normalise: public names)
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    PROMPT_CHOSEN,
    SHAPES_HELP,
    load_rows,
    normalise,
    read_records,
    record_features,
)

logger = logging.getLogger(__name__)

SUFFIXES = (".json", ".jsonl", ".parquet")
SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("eval", "validation", "test")  # preference order when a directory holds several
ACCEPTED = "a .json/.jsonl/.parquet file, or a directory of them (train.* plus optional eval.*, validation.* or test.*)"


def is_local_data_path(name: str) -> bool:
    """True when ``name`` is local json/jsonl/parquet data; False for hub names and save_to_disk directories."""
    path = Path(name)
    if not name:
        return False
    if path.is_file():
        if path.suffix.lower() in SUFFIXES:
            return True
        raise DschatError(
            f"--data_path {name!r} is a file with suffix {path.suffix!r}; local data must be {ACCEPTED}. "
            "Fix: convert it to .jsonl, .json or .parquet, or pass a directory written by save_to_disk."
        )
    if not path.is_dir() or any((path / marker).is_file() for marker in SAVE_TO_DISK_MARKERS):
        return False
    if not _data_files_in(path):
        raise DschatError(
            f"--data_path {name!r} is a directory without .json/.jsonl/.parquet files at its top level "
            f"(subdirectories are not searched) and is not a datasets.save_to_disk directory. "
            f"Fix: pass {ACCEPTED}."
        )
    return True


def _data_files_in(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    )


def _split_of(path: Path) -> str:
    """The split a file name announces: ``train.jsonl``, ``train-00000-of-00002.parquet`` -> ``train``."""
    return re.split(r"[-_.]", path.name.lower(), maxsplit=1)[0]


def find_split_files(name: str) -> tuple[list[Path], list[Path]]:
    """The training and evaluation files of ``name``; no eval files means the eval set is carved off."""
    path = Path(name)
    if path.is_file():
        return [path], []
    files = _data_files_in(path)
    groups: dict[str, list[Path]] = {}
    for file in files:
        groups.setdefault(_split_of(file), []).append(file)
    eval_split = next((split for split in EVAL_SPLITS if split in groups), None)
    if eval_split is None:
        return files, []  # every file is training data, in name order
    if TRAIN_SPLIT not in groups:
        raise DschatError(
            f"--data_path {name!r} holds {eval_split} files but no train.* file. "
            "Fix: name the training file(s) train.json/.jsonl/.parquet."
        )
    others = [f.name for f in files if _split_of(f) not in (TRAIN_SPLIT, *EVAL_SPLITS)]
    if others:
        raise DschatError(
            f"--data_path {name!r} holds train and {eval_split} files, so it cannot tell which split "
            f"{others} belong to. Fix: rename them to train.* or {eval_split}.*, or move them elsewhere."
        )
    ignored = [f.name for split in EVAL_SPLITS if split not in (eval_split,) for f in groups.get(split, [])]
    if ignored:
        logger.warning("local data %s: evaluating on %s files; ignoring %s", name, eval_split, ignored)
    return groups[TRAIN_SPLIT], groups[eval_split]


def clean_name(name: str) -> str:
    """A stable, filesystem-safe cache name: ``local_<basename>_<8 hex of sha256(absolute path)>``."""
    resolved = str(Path(name).resolve())
    base = re.sub(r"[^A-Za-z0-9]+", "_", Path(resolved).name).strip("_") or "data"
    return f"local_{base}_{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


class LocalFileDataset(PromptRawDataset):
    """Records from local json/jsonl/parquet files, rendered in upstream's prompt format."""

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str):
        import datasets

        super().__init__(output_path, seed, local_rank, dataset_name, load=False)
        if not is_local_data_path(dataset_name):
            raise DschatError(
                f"--data_path {dataset_name!r} does not exist or is a save_to_disk directory. Fix: pass {ACCEPTED}."
            )
        self.dataset_name = dataset_name
        self.dataset_name_clean = clean_name(dataset_name)
        train_files, eval_files = find_split_files(dataset_name)
        train_rows, eval_rows = load_rows(train_files), load_rows(eval_files)
        self.drop_reasons = Counter(r["drop_reason"] for r in train_rows + eval_rows if r["drop_reason"])
        self.raw_datasets = datasets.DatasetDict(
            {"train": datasets.Dataset.from_list(train_rows, features=record_features())}
        )
        if eval_files:
            self.raw_datasets["eval"] = datasets.Dataset.from_list(eval_rows, features=record_features())
        logger.info(
            "local data %s (cache name %s): train=%d from %s, eval=%s",
            dataset_name,
            self.dataset_name_clean,
            len(train_rows),
            [f.name for f in train_files],
            f"{len(eval_rows)} from {[f.name for f in eval_files]}"
            if eval_files
            else f"carved from train (split {splits.TRAIN_EVAL_SPLIT})",
        )
        if self.drop_reasons:
            logger.warning("local data %s: skipping samples: %s", dataset_name, dict(self.drop_reasons))

    def _carved(self, index: int):
        return splits.carve_train_eval(
            self.output_path, self.dataset_name_clean, self.seed, self.raw_datasets["train"], index
        )

    def get_train_data(self):
        return self.raw_datasets["train"] if "eval" in self.raw_datasets else self._carved(0)

    def get_eval_data(self):
        return self.raw_datasets["eval"] if "eval" in self.raw_datasets else self._carved(1)

    def drop_reason(self, sample) -> str | None:
        """Why a sample is skipped (``"empty prompt"``, ``"empty response"``), or None when it is used."""
        return sample["drop_reason"] or None

    def get_prompt(self, sample) -> str | None:
        if sample["drop_reason"] == EMPTY_PROMPT:
            return None
        if sample["kind"] == PROMPT_CHOSEN:
            return " " + sample["prompt"]
        return "".join(s.text for s in prompts.render_upstream(sample["messages"][:-1]))

    def get_chosen(self, sample) -> str | None:
        answer = sample["chosen"] if sample["kind"] == PROMPT_CHOSEN else sample["messages"][-1]["content"]
        if not answer.strip():
            return None
        if sample["kind"] == PROMPT_CHOSEN:
            return " " + answer
        return prompts.render_upstream(sample["messages"][-1:])[0].text

    def get_rejected(self, sample) -> str | None:
        if not sample["rejected"]:
            self.warn_no_rejected()
            return None
        return " " + sample["rejected"]

    def get_prompt_and_chosen(self, sample) -> str | None:
        if sample["drop_reason"]:
            return None
        if sample["kind"] == PROMPT_CHOSEN:
            return " " + sample["prompt"] + " " + sample["chosen"]
        return "".join(s.text for s in prompts.render_upstream(sample["messages"]))

    def get_prompt_and_rejected(self, sample) -> str | None:
        rejected, prompt = self.get_rejected(sample), self.get_prompt(sample)
        return None if rejected is None or prompt is None else prompt + rejected

    def get_conversation(self, sample) -> list[dict] | None:
        """The record's own messages (no re-parsing of rendered text); None when the sample is skipped."""
        if sample["drop_reason"]:
            return None
        return [{"role": m["role"], "content": m["content"]} for m in sample["messages"]]
