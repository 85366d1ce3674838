"""Local data records: read json/jsonl/parquet files with exact error locations, detect each file's record
shape and normalise every record to one schema (the pipeline's view of a local file)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from dschat.errors import DschatError, quote
from dschat.utils.data import prompts

logger = logging.getLogger(__name__)

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


def deepest_line(text: str) -> int:
    """The 1-based line where ``text``'s JSON nesting first reaches its deepest level (strings skipped)."""
    depth = deepest = line = found = 1
    in_string = escaped = False
    for char in text:
        if char == "\n":
            line += 1
        elif in_string:
            escaped, in_string = (False, in_string) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest, found = depth, line
        elif char in "]}":
            depth -= 1
    return found


def too_deep_error(path: Path | str, lineno: int) -> DschatError:
    """The error for JSON nested deeper than Python's parser recurses (``[[[[...``)."""
    return DschatError(
        f"{path} line {lineno}: the JSON nests too deeply to parse (thousands of [ or {{). Fix the record "
        "there: data records are objects nested a few levels deep."
    )


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DschatError(
            f"{path} line {lineno}: malformed JSON: {err.msg} (column {err.colno}). Fix the JSON on that line "
            "(.jsonl: one object per line; .json: a list of objects or one object per line)."
        ) from None
    except RecursionError:
        raise too_deep_error(path, lineno) from None
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
    except RecursionError:
        raise too_deep_error(path, deepest_line(text)) from None
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
            f"{path}: cannot read it as parquet ({quote(str(err))}). "
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
        f"{where}: cannot tell the record shape from its fields {quote(sorted(record))}. "
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


def record_features():
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
