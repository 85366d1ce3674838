"""What a run's output directory holds: the file names, and ``dschat_run.json`` (how the model was trained).

The one owner of that layout, used by the save, the chatbot, evaluation, the demo and the server. Stdlib only,
so reading a model's run info never imports DeepSpeed or torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dschat import __version__
from dschat.errors import DschatError
from dschat.utils import atomic
from dschat.utils.data.prompts import UPSTREAM

CONFIG_NAME = "config.json"
RUN_INFO_NAME = "dschat_run.json"
METRICS_NAME = "metrics.jsonl"  # one row per micro-step
EVAL_METRICS_NAME = "eval.jsonl"  # one row per evaluation
CHECKPOINTS_DIR = "checkpoints"
LORA_ADAPTER_DIR = "lora_adapter"
ADAPTER_CONFIG_NAME = "adapter_config.json"  # PEFT's: marks an adapter dir
SAFE_WEIGHTS_NAME = "model.safetensors"
BIN_WEIGHTS_NAME = "pytorch_model.bin"  # upstream's single-file format


def run_info(prompt_template: str, flags: dict) -> dict:
    """What the output dir records about the run: the prompt format (chat and eval default to it) and all flags."""
    return {
        "dschat_version": __version__,
        "prompt_template": prompt_template,
        "eos_token_appended": prompt_template == UPSTREAM,
        "args": flags,
    }


def write_run_info(output_dir: str | os.PathLike, info: dict) -> None:
    """Write dschat_run.json atomically."""
    atomic.write_json(Path(output_dir) / RUN_INFO_NAME, info, indent=2, sort_keys=True, default=str)


def read_run_info(model_dir: str | os.PathLike) -> dict:
    """The dschat_run.json saved with a model, or {} for a model dschat did not train."""
    path = Path(model_dir) / RUN_INFO_NAME
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        problem = f"is not valid JSON ({type(err).__name__}: {str(err)[:120]})"
    else:
        if isinstance(info, dict):
            return info
        problem = "is not a JSON object"
    raise DschatError(
        f"{path} {problem}; restore it from the training run or delete it to load the model without dschat "
        "run info"
    )


def trained_prompt_template(model_dir: str | os.PathLike, requested: str | None = None) -> str:
    """``requested`` (a --prompt_template flag), else the format the model was trained with, else upstream's.

    A ``lora_adapter/`` dir without run info of its own reads its training run's, one level up.
    """
    if requested is not None:
        return requested
    info = read_run_info(model_dir)
    if not info and (Path(model_dir) / ADAPTER_CONFIG_NAME).is_file():
        info = read_run_info(Path(model_dir).parent)
    return info.get("prompt_template", UPSTREAM)


def comparison_template(model_dirs: list[str], requested: str | None = None) -> tuple[str, str]:
    """The one prompt format to compare several models in, and why: a comparison in two formats measures the
    formats, not the models (a base model prompted in upstream's text scores far worse than in its template).

    ``requested`` (a --prompt_template flag) wins; else the format the trained models share (models without
    run info, such as a base model, follow it); else upstream's. Models trained in different formats need a
    choice: DschatError.
    """
    if requested:
        return requested, "--prompt_template"
    trained = {path: read_run_info(path).get("prompt_template") for path in model_dirs}
    formats = sorted({fmt for fmt in trained.values() if fmt})
    if len(formats) > 1:
        listed = ", ".join(f"{path}: {fmt}" for path, fmt in trained.items() if fmt)
        raise DschatError(
            f"the models were trained in different prompt formats ({listed}); pass --prompt_template "
            f"{' or '.join(formats)} to compare them in one format"
        )
    if formats:
        which = ", ".join(path for path, fmt in trained.items() if fmt)
        return formats[0], f"the format {which} was trained with, used for every model"
    return UPSTREAM, "upstream's format (no model has dschat run info)"
