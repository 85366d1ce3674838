"""The one exception type for user mistakes, and the CLI wrapper that reports it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)


class DschatError(Exception):
    """A user mistake (bad flag, path, data): the message says what, where and how to fix it."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a CLI entry point; a DschatError becomes one line on stderr and exit status 2."""
    try:
        main(argv)
    except DschatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
