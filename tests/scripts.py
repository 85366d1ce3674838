"""The repo's scripts as modules for in-process tests: each is loaded once, whichever test file asks."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from dschat.utils.dist import LAUNCHER_VARS

ROOT = Path(__file__).resolve().parents[1]
STEP1 = ROOT / "training" / "step1_supervised_finetuning"
MAIN = STEP1 / "main.py"
DEEPSPEED = str(Path(sys.executable).parent / "deepspeed")  # the launcher of this venv


def process_env() -> dict[str, str]:
    """The environment for a launched run: one torch thread, none of this test process's launcher variables."""
    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS}
    return env | {"OMP_NUM_THREADS": "1"}


@functools.cache
def load_script(path: Path) -> ModuleType:
    """Import a script that is not part of a package (main.py, prompt_eval.py, make_demo_data.py)."""
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step1_main() -> ModuleType:
    return load_script(MAIN)


def main_argv(model, data, cache_dir, *extra: str, max_seq_len: int = 64, batch_size: int = 2) -> list[str]:
    """main.py's flags for a small CPU run of ``model`` on ``data`` (extra flags appended: the last one wins)."""
    return [
        "--model_name_or_path",
        str(model),
        "--data_path",
        str(data),
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(cache_dir),
        "--dtype",
        "fp32",
        "--max_seq_len",
        str(max_seq_len),
        "--per_device_train_batch_size",
        str(batch_size),
        "--per_device_eval_batch_size",
        str(batch_size),
        "--deepspeed",
        *extra,
    ]
