"""Shared fixtures: tiny offline models and a one-process distributed environment."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import tiny  # noqa: E402

SHM_BUFFERS = "/dev/shm/deepspeed_allreduce_buffer_*"


@pytest.fixture(scope="session", autouse=True)
def no_leaked_shm_buffers():
    """DeepSpeed's CPU comm leaves a ~70 MB /dev/shm file per process; remove what this session's runs left
    (killed subprocesses cannot clean up after themselves)."""
    import glob

    before = set(glob.glob(SHM_BUFFERS))
    yield
    for path in set(glob.glob(SHM_BUFFERS)) - before:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random OPT-, Llama- and GPT-2-style models with their tokenizers (keys opt, llama, gpt2, opt8)."""
    root = tmp_path_factory.mktemp("models")
    models = {arch: tiny.make_model(root / f"tiny-{arch}", arch) for arch in ("opt", "llama", "gpt2")}
    # Vocabulary already a multiple of 8: no resize, so no random rows that depend on the ZeRO stage.
    models["opt8"] = tiny.make_model(root / "tiny-opt8", "opt", vocab_size=304)
    return models


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def dist_env():
    """A one-process gloo process group, as the deepspeed launcher would set it up (rank 0 of 1)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_SIZE": "1",
    }
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo")
    yield
