#!/usr/bin/env python
"""Serve a trained model over OpenAI's API with a chat page: ``python inference/serve.py --path ./output``.

The same as ``python -m dschat.serve``; all flags: ``--help``; the logic lives in ``dschat.serve``.
"""

import sys

from dschat.errors import run_cli
from dschat.serve.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
