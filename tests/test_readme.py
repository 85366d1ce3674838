"""The README's commands work as printed: every bash block runs in a fresh shell with the environment active.

Tiny stand-ins replace what this machine cannot have (a hub model, a hub dataset, the user's own files); GPU
lines (``deepspeed main.py`` with upstream's fp16 default) are checked with ``--dtype fp32 --dry_run`` appended.
The quick start's own block (``make demo``/``make test``) is what CI runs, so it is not run again here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import scripts
from datasets import Dataset, DatasetDict

README = scripts.ROOT / "README.md"
ACTIVATE = scripts.ROOT / ".venv" / "bin" / "activate"
GPU_LINE = re.compile(r"^deepspeed main\.py ")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines kept out."""
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, tiny_models):
    """Substitutions for the README's placeholders: tiny models and data that exist on this machine."""
    root = tmp_path_factory.mktemp("readme")
    rows = [{"prompt": f"What is {i} plus one?", "response": f"It is {i + 1}."} for i in range(24)]
    data = root / "my_data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    hub = root / "hub" / "Dahoas" / "rm-static"  # a local copy of a hub dataset: its path contains the name
    pairs = [
        {
            "prompt": f"\n\nHuman: Say {i}\n\nAssistant:",
            "response": f" {i}",
            "chosen": f" {i}",
            "rejected": "no",
        }
        for i in range(24)
    ]
    DatasetDict({"train": Dataset.from_list(pairs), "test": Dataset.from_list(pairs[:4])}).save_to_disk(
        str(hub)
    )
    (root / "my_prompts.txt").write_text("Hello?\nWhat is one plus one?\n")
    return {
        "./my-model": str(tiny_models["opt"]),
        "facebook/opt-1.3b": str(tiny_models["opt"]),
        "./base": str(tiny_models["opt"]),
        "my_data.jsonl": str(data),
        "Dahoas/rm-static": str(hub),
        "my_prompts.txt": str(root / "my_prompts.txt"),
        "./output": str(root / "output"),
        "cleaned/": str(root / "cleaned") + "/",
        "report.json": str(root / "report.json"),
    }


def not_copied(directory: str, names: list[str]) -> set[str]:
    """What a fresh clone lacks: the environment, git's store, run outputs at the top, caches anywhere."""
    top = Path(directory) == scripts.ROOT
    return {
        n for n in names if n == "__pycache__" or top and (n in (".venv", ".git") or n.startswith("output"))
    }


def substitute(command: str, stand_ins: dict[str, str]) -> str:
    for placeholder, real in stand_ins.items():
        command = re.sub(rf"(?<![\w/.-]){re.escape(placeholder)}(?![\w/-])", real, command)
    if GPU_LINE.match(command):
        command += " --dtype fp32 --dry_run"
    return command


def test_every_readme_command_runs_as_printed(stand_ins, tmp_path):
    blocks = bash_blocks(README.read_text())
    assert len(blocks) > 5
    repo = tmp_path / "clone"  # the commands write next to themselves: run them in a copy of the repo
    shutil.copytree(scripts.ROOT, repo, ignore=not_copied)
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", DSCHAT_CACHE=str(tmp_path / "cache"))
    ran = []
    for block in blocks:
        lines = commands(block)
        if any(line.startswith("make ") for line in lines) or lines == ["source .venv/bin/activate"]:
            continue  # the quick start (CI runs it) and the activation line itself
        script = "\n".join(substitute(line, stand_ins) for line in lines)
        result = subprocess.run(
            ["bash", "-c", f"set -euo pipefail\nsource {ACTIVATE}\n{script}"],
            cwd=repo,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, f"README block failed:\n{script}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        assert "Setting accelerator to CPU" not in result.stderr  # DeepSpeed's warning on every command
        ran += lines
    assert any(line.startswith("python main.py") for line in ran)
    assert Path(stand_ins["./output"], "config.json").is_file()  # trained by one block, used by the next ones
