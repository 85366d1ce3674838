"""``python -m dschat.serve``: a user mistake is one line on stderr, exit status 2."""

import sys

from dschat.errors import run_cli
from dschat.serve.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
