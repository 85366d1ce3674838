"""Local ``.json``/``.jsonl``/``.parquet`` data for ``--data_path``: find, parse, detect shapes, render upstream text.

Each file's record shape is detected from its first record and every record is normalised to one schema
(``kind``, ``prompt``/``chosen``/``rejected`` strings, ``messages``), so files of different shapes combine.
``{prompt, chosen}`` records render exactly like upstream's ``local/jsonfile``; the others use the upstream
`` Human: ... Assistant: ...`` format from ``prompts``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dschat.errors import DschatError
from dschat.utils.data import prompts, splits
from dschat.utils.data.base import PromptRawDataset

logger = logging.getLogger(__name__)

SUFFIXES = (".json", ".jsonl", ".parquet")
SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "dataset_info.json", "state.json")
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("eval", "validation", "test")  # preference order when a directory holds several
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
}
EMPTY_PROMPT = "empty prompt"
EMPTY_RESPONSE = "empty response"
PROMPT_CHOSEN = "prompt_chosen"
CONVERSATION_KINDS = ("messages", "sharegpt")
ACCEPTED = "a .json/.jsonl/.parquet file, or a directory of them (train.* plus optional eval.*, validation.* or test.*)"


@dataclass(frozen=True)
class Shape:
    """A record layout: the fields that identify it, its kind name and how users write it."""

    kind: str
    required: tuple[str, ...]
    label: str


SHAPES = (
    Shape("messages", ("messages",), "{messages: [{role, content}, ...]}"),
    Shape("sharegpt", ("conversations",), "{conversations: [{from, value}, ...]}"),
    Shape("alpaca", ("instruction", "output"), "{instruction, input, output}"),
    Shape(PROMPT_CHOSEN, ("prompt", "chosen"), "{prompt, chosen[, rejected]}"),
    Shape("prompt_response", ("prompt", "response"), "{prompt, response}"),
    Shape("prompt_completion", ("prompt", "completion"), "{prompt, completion}"),
)
SHAPES_HELP = ", ".join(shape.label for shape in SHAPES)
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def _json_type(value) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)


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


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DschatError(
            f"{path} line {lineno}: malformed JSON: {err.msg} (column {err.colno}). Fix the JSON on that line "
            "(.jsonl: one object per line; .json: a list of objects or one object per line)."
        ) from None
    if not isinstance(record, dict):
        raise DschatError(
            f"{path} line {lineno}: expected a JSON object, found a {_json_type(record)}. "
            f"Fix: write one object per line, shaped like one of {SHAPES_HELP}."
        )
    return record


def _read_json_lines(path: Path, text: str) -> list[tuple[str, dict]]:
    lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and friends
    return [
        (f"{path} line {n}", _parse_line(path, n, line)) for n, line in enumerate(lines, 1) if line.strip()
    ]


def _read_json(path: Path, text: str) -> list[tuple[str, dict]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several top-level values: one object per line
            return _read_json_lines(path, text)
        raise DschatError(
            f"{path} line {err.lineno}: malformed JSON: {err.msg} (column {err.colno}). Fix the JSON there "
            "(.json: a list of objects or one object per line)."
        ) from None
    records = data if isinstance(data, list) else [data]
    for n, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise DschatError(
                f"{path} record {n}: expected a JSON object, found a {_json_type(record)}. "
                f"Fix: make the file a list of objects shaped like one of {SHAPES_HELP}."
            )
    return [(f"{path} record {n}", record) for n, record in enumerate(records, 1)]


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DschatError(
            f"{path}: cannot read it as parquet ({err}). "
            "Fix: rewrite it with pandas.DataFrame.to_parquet or pyarrow, or convert it to .jsonl."
        ) from None
    return [(f"{path} row {n}", row) for n, row in enumerate(rows, 1)]


def read_records(path: Path) -> list[tuple[str, dict]]:
    """Every record of one file with its location (file and line, record or row number, 1-based)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        records = _read_parquet(path)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise DschatError(f"{path} is not UTF-8 text ({err}). Fix: re-save it as UTF-8.") from None
        if not text.strip():
            records = []
        elif suffix == ".json":
            records = _read_json(path, text)
        else:
            records = _read_json_lines(path, text)
    if not records:
        raise DschatError(f"{path} is empty: it holds no records. Fix: add records or remove the file.")
    return records


def _detect_shape(where: str, record: dict) -> Shape:
    for shape in SHAPES:
        if all(field in record for field in shape.required):
            return shape
    raise DschatError(
        f"{where}: cannot tell the record shape from its fields {sorted(record)}. "
        f"Fix: use one of the accepted shapes {SHAPES_HELP} (the first record of each file sets its shape)."
    )


def _text(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DschatError(f"{where}: field {field!r} is a {_json_type(value)}. Fix: make it a string.")
    return value


def _conversation(record: dict, shape: Shape, where: str) -> list[dict]:
    field = shape.required[0]
    role_key, content_key = ("role", "content") if shape.kind == CONVERSATION_KINDS[0] else ("from", "value")
    turns = record[field]
    fix = f"Fix: make {field!r} a list of {{{role_key}, {content_key}}} objects ending with the assistant's answer."
    if not isinstance(turns, list) or not turns:
        raise DschatError(f"{where}: {field!r} is an empty list or a {_json_type(turns)}. {fix}")
    messages = []
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DschatError(f"{where}: turn {n} of {field!r} lacks {role_key!r} or {content_key!r}. {fix}")
        role = ROLE_ALIASES.get(str(turn[role_key]).lower())
        if role is None:
            raise DschatError(
                f"{where}: turn {n} has {role_key} {turn[role_key]!r}; accepted: {sorted(ROLE_ALIASES)}. {fix}"
            )
        messages.append({"role": role, "content": _text(turn, content_key, f"{where} turn {n}")})
    if not any(m["role"] == "user" for m in messages):
        raise DschatError(f"{where}: the conversation has no user turn. {fix}")
    if messages[-1]["role"] != "assistant":
        raise DschatError(
            f"{where}: the conversation ends with a {messages[-1]['role']} turn, not the assistant's answer. "
            "Fix: drop the trailing turn(s) or add the assistant's answer."
        )
    return messages


def _single_turn(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _question_answer(record: dict, shape: Shape, where: str) -> tuple[str, str]:
    """Question and answer of a single-turn record; alpaca appends a non-empty input after a blank line."""
    if shape.kind == "alpaca":
        question, extra = _text(record, "instruction", where), _text(record, "input", where)
        return question + (f"\n\n{extra}" if extra else ""), _text(record, "output", where)
    return _text(record, "prompt", where), _text(record, shape.required[1], where)


def normalise(record: dict, shape: Shape, where: str) -> dict:
    """One record in the common schema, or DschatError when it lacks its shape's fields."""
    missing = [field for field in shape.required if field not in record]
    if missing:
        raise DschatError(
            f"{where}: record has fields {sorted(record)}, but this file's records are {shape.label} "
            f"(detected from its first record), which needs {list(shape.required)}. Fix: add {missing} to "
            "the record, or move records of another shape to their own file."
        )
    prompt = chosen = rejected = None
    if shape.kind in CONVERSATION_KINDS:
        messages = _conversation(record, shape, where)
        question = "".join(m["content"] for m in messages if m["role"] == "user")
        answer = messages[-1]["content"]
    elif shape.kind == PROMPT_CHOSEN:
        prompt = question = _text(record, "prompt", where)
        chosen = answer = _text(record, "chosen", where)
        rejected = _text(record, "rejected", where) if record.get("rejected") is not None else None
        has_markers = prompts.HUMAN in prompt or prompts.ASSISTANT in prompt
        messages = prompts.parse_upstream_dialogue(f" {prompt} {chosen}") if has_markers else None
        messages = messages or _single_turn(prompt, chosen)
    else:
        question, answer = _question_answer(record, shape, where)
        messages = _single_turn(question, answer)
    reason = EMPTY_PROMPT if not question.strip() else EMPTY_RESPONSE if not answer.strip() else ""
    return {
        "kind": shape.kind,
        "source": where,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "messages": messages,
        "drop_reason": reason,
    }


def load_rows(files: list[Path]) -> list[dict]:
    """Parse, validate and normalise every record of ``files``, in order, each file with its own shape."""
    rows = []
    for path in files:
        records = read_records(path)
        shape = _detect_shape(*records[0])
        logger.info("local data %s: %d records, shape %s", path, len(records), shape.label)
        rows.extend(normalise(record, shape, where) for where, record in records)
    return rows


def _features():
    from datasets import Features, List, Value

    string = Value("string")
    return Features(
        {
            "kind": string,
            "source": string,
            "prompt": string,
            "chosen": string,
            "rejected": string,
            "messages": List({"role": string, "content": string}),
            "drop_reason": string,
        }
    )


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
            {"train": datasets.Dataset.from_list(train_rows, features=_features())}
        )
        if eval_files:
            self.raw_datasets["eval"] = datasets.Dataset.from_list(eval_rows, features=_features())
        logger.info(
            "local data %s (cache name %s): train=%d from %s, eval=%s",
            dataset_name, self.dataset_name_clean, len(train_rows), [f.name for f in train_files],
            f"{len(eval_rows)} from {[f.name for f in eval_files]}" if eval_files
            else f"carved from train (split {splits.TRAIN_EVAL_SPLIT})",
        )  # fmt: skip
        if self.drop_reasons:
            logger.warning("local data %s: skipping samples: %s", dataset_name, dict(self.drop_reasons))

    def _carved(self, index: int):
        train = self.raw_datasets["train"]
        indices = splits.split_indices(
            self.output_path, self.dataset_name_clean, self.seed, "train_eval", splits.TRAIN_EVAL_SPLIT, index,
            len(train),
        )  # fmt: skip
        return train.select(indices)

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
