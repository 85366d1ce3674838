"""Cleaned records as messages JSON lines, written to a temporary name and renamed when complete."""

from __future__ import annotations

import json
from pathlib import Path

from dschat.errors import DschatError
from dschat.utils import atomic

TRAIN_FILE, EVAL_FILE = "train.jsonl", "eval.jsonl"
# The report goes to a subdirectory: main.py reads every .json/.jsonl/.parquet file at the top level as data.
REPORT_DIR = "report"
OWN_FILES = (TRAIN_FILE, EVAL_FILE)
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` naming this process (atomic's naming, so killed runs' files are swept)."""
    return atomic.temp_sibling(path)


class AtomicJsonl:
    """``{"messages": [...]}`` lines to ``path``: visible under that name only once ``commit`` ran."""

    def __init__(self, path: Path):
        self.path = path
        self.pending = atomic.PendingFile(path, "w", encoding="utf-8")
        self.count = 0

    def write(self, messages: list[dict]) -> None:
        self.pending.handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
        self.count += 1

    def commit(self) -> None:
        """Flush, sync and rename into place."""
        self.pending.commit()

    def abort(self) -> None:
        """Remove the temporary file (after an error, or when there is nothing to write)."""
        self.pending.abort()


def check_output_dir(output_dir: str, input_paths: list[str]) -> Path:
    """Create the output directory; refuse one that holds input files or other data files main.py would read."""
    directory = Path(output_dir)
    if directory.exists() and not directory.is_dir():
        raise DschatError(
            f"--output_dir {output_dir!r} is a file. Fix: pass a directory (it is created if missing)."
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)  # its report/ folder too, later
    except OSError as err:
        raise DschatError(
            f"--output_dir {output_dir!r} cannot be created ({err.strerror or err}). Fix: choose a path under a "
            "writable folder."
        ) from None
    inputs = {Path(p).resolve() for p in input_paths if Path(p).exists()}
    for name in OWN_FILES:
        target = (directory / name).resolve()
        if target in inputs or target.parent in inputs:
            raise DschatError(
                f"--output_dir {output_dir!r} would overwrite the input {target}. Fix: write to another directory "
                "(input files are never modified)."
            )
    others = sorted(
        p.name
        for p in directory.iterdir()
        if p.suffix.lower() in DATA_SUFFIXES and p.name not in OWN_FILES and not p.name.startswith(".")
    )
    if others:
        raise DschatError(
            f"--output_dir {output_dir!r} already holds data files {others}: main.py would read them with the "
            "cleaned ones. Fix: choose an empty directory or move them."
        )
    return directory
