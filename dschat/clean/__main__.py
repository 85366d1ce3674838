"""``python -m dschat.clean``: see ``dschat.clean.cli``."""

import sys

from dschat.clean.cli import main
from dschat.errors import run_cli

sys.exit(run_cli(main))
