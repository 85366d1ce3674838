"""Logging setup: one call per process; ranks other than 0 only report warnings."""

from __future__ import annotations

import logging
import os
import socket
import sys

LOG_FORMAT = "[%(asctime)s] [%(levelname)s] %(name)s: %(message)s"


def global_rank() -> int:
    """This process's global rank, from torch.distributed or the launcher's RANK variable."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def setup_logging(level: int = logging.INFO) -> None:
    """Route dschat's loggers to stderr; quieten ranks other than 0."""
    rank = global_rank()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT if rank == 0 else f"[rank{rank}] " + LOG_FORMAT))
    root = logging.getLogger("dschat")
    root.handlers[:] = [handler]
    root.setLevel(level if rank == 0 else logging.WARNING)
    root.propagate = False
    # Every rank of a multi-rank run says once where it runs: on many nodes, the first thing to check in a log.
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    ranks = logging.getLogger("dschat.ranks")
    ranks.setLevel(logging.INFO)
    ranks.info(
        "rank %d of %s: node rank %s, local rank %s, host %s, pid %d",
        rank,
        os.environ.get("WORLD_SIZE", "1"),
        os.environ.get("CROSS_RANK", "0"),  # DeepSpeed's launcher: this node's rank
        os.environ.get("LOCAL_RANK", "0"),
        socket.gethostname(),
        os.getpid(),
    )
