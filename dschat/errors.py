"""The one exception type for user mistakes, and the CLI wrapper that reports it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)


# What an error may quote of user data, and the longest message a CLI prints (a net under every quote).
QUOTE_CHARS = 200
MAX_MESSAGE_CHARS = 2000


class DschatError(Exception):
    """A user mistake (bad flag, path, data): the message says what, where and how to fix it."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, saying how much was left out (data can be huge)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def one_line_message(err: Exception) -> str:
    """The message as one line of at most MAX_MESSAGE_CHARS."""
    text = " ".join(str(err).split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = f"{text[:MAX_MESSAGE_CHARS]}... ({len(text) - MAX_MESSAGE_CHARS} more characters)"
    return text


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a CLI entry point; a DschatError becomes one line on stderr and exit status 2."""
    try:
        main(argv)
    except DschatError as err:
        print(f"error: {one_line_message(err)}", file=sys.stderr)
        return 2
    return 0
