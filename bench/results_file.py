"""bench/RESULTS.md holds one section per benchmark: each benchmark replaces its own and leaves the others."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: str | Path, section: str) -> None:
    """Put ``section`` (starting with its ``# `` heading) into the file in place of the one with that heading."""
    path = Path(path)
    heading = section.splitlines()[0]
    text = path.read_text() if path.is_file() else ""
    parts = re.split(r"(?m)^(?=# )", text)  # each part starts at a top-level heading (or is the preamble)
    replaced = [section.rstrip() + "\n\n" if part.splitlines()[:1] == [heading] else part for part in parts]
    if heading not in {part.splitlines()[0] for part in parts if part}:
        replaced.append(("\n" if text and not text.endswith("\n\n") else "") + section.rstrip() + "\n")
    path.write_text("".join(replaced).rstrip() + "\n")
