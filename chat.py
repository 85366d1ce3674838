#!/usr/bin/env python
"""Upstream's wrapper: ``python chat.py --path ./output [--max_new_tokens 128]`` runs inference/chatbot.py.

Works from any directory (upstream had to be run from the repo root). Further flags are passed through to
the chatbot (e.g. ``--prompt_template``, ``--temperature``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

CHATBOT = Path(__file__).resolve().parent / "inference" / "chatbot.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", type=str, required=True, help="Directory of the trained model.")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="Most tokens per answer.")
    args, passthrough = parser.parse_known_args(argv)
    command = [
        sys.executable,
        str(CHATBOT),
        "--path",
        args.path,
        "--max_new_tokens",
        str(args.max_new_tokens),
    ]
    return subprocess.call(command + passthrough)


if __name__ == "__main__":
    sys.exit(main())
