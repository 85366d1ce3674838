"""An output dir belongs to one run at a time, and a fresh run never mixes with an older run's checkpoints.

Rank 0 holds an OS lock (``flock`` on ``<output_dir>/.dschat.lock``) for the run's whole life; a second run
(or a requeued copy of the same job) into the same dir stops at once with a message naming the holder. A
fresh run into a dir that holds another run's checkpoints refuses (they would win ``--save_total_limit`` and
``--resume`` would pick them), unless ``--overwrite_output_dir`` asks to start clean. Writing the final
model over the model being trained is refused too.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import IO

from dschat.errors import DschatError
from dschat.run_dir import CHECKPOINTS_DIR, EVAL_METRICS_NAME, METRICS_NAME
from dschat.utils import dist

LOCK_NAME = ".dschat.lock"


def existing_run_problem(
    output_dir: str | None, model_path: str, resuming: bool, overwrite: bool
) -> str | None:
    """Why this output dir cannot take a fresh run (checked before anything loads), or None."""
    if not output_dir:
        return None
    out = Path(output_dir).resolve()
    if Path(model_path).exists() and out == Path(model_path).resolve():
        return (
            f"--output_dir {output_dir!r} is the model being trained (--model_name_or_path): the final save "
            "would overwrite the base weights. Choose another --output_dir"
        )
    steps = (
        sorted(p.name for p in (out / CHECKPOINTS_DIR).glob("step*"))
        if (out / CHECKPOINTS_DIR).is_dir()
        else []
    )
    if steps and not resuming and not overwrite:
        return (
            f"--output_dir {output_dir!r} holds another run's checkpoints ({', '.join(steps[-3:])}): continue "
            "that run with --resume, start clean with --overwrite_output_dir (its checkpoints and metrics are "
            "deleted), or choose another --output_dir"
        )
    return None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']} ({info['command']})"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "another process"


def claim_output_dir(output_dir: str | None, overwrite: bool, resuming: bool) -> IO | None:
    """Lock the output dir for this run (rank 0; every rank learns whether it worked) and start clean if asked.

    Returns the open lock file: the lock lasts as long as the process keeps it (the whole run).
    """
    handle, problem = None, None
    if output_dir and dist.get_rank() == 0:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / LOCK_NAME
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            problem = (
                f"--output_dir {output_dir!r} is in use by a running dschat run ({_holder(path)}); an output dir "
                "belongs to one run at a time: wait for it to end, stop it, or choose another --output_dir"
            )
            handle.close()
            handle = None
        else:
            handle.seek(0)
            handle.truncate()
            json.dump(
                {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300]},
                handle,
            )
            handle.flush()
            if overwrite and not resuming:
                start_clean(out)
    if dist.all_reduce_max(int(problem is not None)):  # every rank stops, none waits in a later collective
        raise DschatError(problem or f"--output_dir {output_dir!r} is in use by another run (see rank 0)")
    return handle


def start_clean(out: Path) -> None:
    """--overwrite_output_dir: remove an earlier run's checkpoints and metrics before this run writes its own."""
    shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    for name in (METRICS_NAME, EVAL_METRICS_NAME):
        (out / name).unlink(missing_ok=True)
