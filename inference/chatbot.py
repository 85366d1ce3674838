#!/usr/bin/env python
"""Chat with a trained model (upstream's entry point): ``python inference/chatbot.py --path ./output``.

Type a prompt per turn; ``clear`` forgets the conversation, ``quit``/``exit`` or Ctrl-D ends it. Prompts piped
on stdin get one answer line each. All flags: ``--help``; the logic lives in ``dschat.inference.chat``.
"""

import sys

from dschat.errors import run_cli
from dschat.inference.chat import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
