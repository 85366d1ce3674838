"""dschat.utils.atomic, the one write-then-rename: a writer killed at any moment leaves the old version whole."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dschat.utils import atomic

# The child writes half of the new content, says so, and waits to be killed.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dschat.utils import atomic

    kind, target = sys.argv[1], Path(sys.argv[2])
    if kind == "file":
        with atomic.open_atomic(target) as handle:
            handle.write("new and half")
            handle.flush()
            print("writing", flush=True)
            time.sleep(60)
    else:
        with atomic.staging_dir(target) as staging:
            (staging / "weights.bin").write_bytes(b"half")
            print("writing", flush=True)
            time.sleep(60)
    """
)


def kill_mid_write(kind: str, target) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(target)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_a_file_write_killed_midway_leaves_the_old_file_and_a_sweepable_leftover(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_json(target, {"step": 1})
    kill_mid_write("file", target)
    assert json.loads(target.read_text()) == {"step": 1}
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]
    assert len(leftovers) == 1
    assert atomic.sweep(tmp_path) == leftovers and sorted(p.name for p in tmp_path.iterdir()) == [
        "state.json"
    ]
    atomic.write_json(target, {"step": 2})
    assert json.loads(target.read_text()) == {"step": 2}


def test_a_directory_publish_killed_midway_leaves_the_old_directory(tmp_path):
    target = tmp_path / "adapter"
    with atomic.staging_dir(target) as staging:
        (staging / "weights.bin").write_bytes(b"complete")
    kill_mid_write("dir", target)
    assert (target / "weights.bin").read_bytes() == b"complete"
    with atomic.staging_dir(target) as staging:  # the next writer sweeps what the killed one left
        (staging / "weights.bin").write_bytes(b"newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (target / "weights.bin").read_bytes() == b"newer"


def test_an_error_inside_the_block_publishes_nothing(tmp_path):
    target = tmp_path / "out.txt"
    atomic.write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.open_atomic(target) as handle:
        handle.write("partial")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError), atomic.staging_dir(tmp_path / "dir") as staging:
        (staging / "x").write_text("partial")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_live_writers_temp_file_is_not_swept(tmp_path):
    live = tmp_path / f"{atomic.TEMP_PREFIX}data-{os.getppid()}"  # a running process's name
    live.write_text("in progress")
    assert atomic.sweep(tmp_path) == [] and live.exists()


def test_library_writers_publish_atomically_with_the_normal_mode(tmp_path):
    target = tmp_path / "array.npy"

    def write(path: str) -> None:
        with open(path, "wb") as handle:
            handle.write(b"payload")
        os.chmod(path, 0o600)  # as libraries that write through private temp files leave them

    atomic.write_with(target, write)
    atomic.default_permissions(tmp_path)
    assert target.read_bytes() == b"payload" and target.stat().st_mode & 0o044 == 0o044
    assert sorted(p.name for p in tmp_path.iterdir()) == ["array.npy"]
