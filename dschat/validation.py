"""Checks of step-1 flags before anything is loaded: every problem reported at once, as one DschatError."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
from dataclasses import dataclass

from dschat.config import ZERO_STAGES, EngineConfig, section_from_args
from dschat.errors import DschatError
from dschat.utils.data.splits import data_weights_problem, parse_data_split
from dschat.utils.ds_utils import override_problem
from dschat.utils.model.model_utils import model_source_problem
from dschat.utils.ownership import existing_run_problem

# Validation tables: (flag, smallest allowed value).
AT_LEAST = (
    ("per_device_train_batch_size", 1),
    ("per_device_eval_batch_size", 1),
    ("gradient_accumulation_steps", 1),
    ("num_train_epochs", 1),
    ("log_interval", 1),
    ("max_seq_len", 2),
    ("max_steps", 0),
    ("eval_interval", 0),
    ("num_warmup_steps", 0),
    ("lora_dim", 0),
    ("save_interval", 0),
    ("save_total_limit", 0),
    ("max_bad_steps", 0),
)


@dataclass(frozen=True)
class Bounds:
    """A numeric flag's allowed values: finite, between ``low`` and ``high`` (each end allowed or not)."""

    flag: str
    low: float
    high: float = math.inf
    low_allowed: bool = True
    high_allowed: bool = True
    fix: str = ""

    def problem(self, value: float | None) -> str | None:
        """Why ``value`` is not allowed, or None (also for a flag left unset)."""
        if value is None:
            return None
        above = value >= self.low if self.low_allowed else value > self.low
        below = value <= self.high if self.high_allowed else value < self.high
        if math.isfinite(value) and above and below:
            return None
        if self.high == math.inf:
            allowed = f"a finite number {'>=' if self.low_allowed else '>'} {self.low}"
        else:
            allowed = f"in {'[' if self.low_allowed else '('}{self.low}, {self.high}{']' if self.high_allowed else ')'}"
        return f"--{self.flag} {value}: must be {allowed}. Fix: {self.fix}"


# Validation table: float (and bounded integer) flags; NaN and infinity are never allowed.
IN_BOUNDS = (
    Bounds(
        "dist_timeout",
        0,
        low_allowed=False,
        fix="minutes a rank waits for the others, such as the default 10 (more for very long data builds)",
    ),
    Bounds(
        "learning_rate",
        0,
        low_allowed=False,
        fix="pass a positive rate such as upstream's default 1e-3 (fine-tuning often uses 1e-5)",
    ),
    Bounds(
        "lora_learning_rate", 0, low_allowed=False, fix="pass a positive rate such as upstream's default 5e-4"
    ),
    Bounds("weight_decay", 0, fix="pass 0 (upstream's default: no decay) or a positive value such as 0.1"),
    Bounds(
        "lora_alpha",
        0,
        low_allowed=False,
        fix="LoRA's scaling is lora_alpha / lora_dim; pass a positive value such as the default 1",
    ),
    Bounds(
        "dropout",
        0,
        1,
        high_allowed=False,
        fix="it is a probability: pass 0 to disable dropout, or leave the flag out to keep the model's own",
    ),
    Bounds("lora_dropout", 0, 1, high_allowed=False, fix="it is a probability: 0 (the default) disables it"),
    Bounds("seed", 0, 2**32 - 1, fix="numpy's seeds are unsigned 32-bit integers; the default is 1234"),
)


def unwritable_dir_problem(path: str) -> str | None:
    """Why ``path`` cannot be (created and) written as a directory, or None."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"cannot be created: {probe!r} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"is not writable ({probe!r} denies write access)"
    return None


def precision_problems(args: argparse.Namespace, accelerator: str, fp16_ok: bool, bf16_ok: bool) -> list[str]:
    """Precision and GPU-only kernels this accelerator cannot run."""
    problems = []
    if args.dtype == "fp16" and (accelerator == "cpu" or not fp16_ok):
        # DeepSpeed's CPU accelerator may claim fp16 (mkldnn), but fp16 training on CPU is not a supported path.
        problems.append(f"--dtype fp16 is not supported on {accelerator}: use --dtype fp32 (or bf16)")
    if args.dtype == "bf16" and not bf16_ok:
        problems.append(f"--dtype bf16 is not supported on {accelerator}: use --dtype fp16 or fp32")
    flash = args.attn_implementation and args.attn_implementation.startswith("flash_attention")
    if flash and (accelerator == "cpu" or importlib.util.find_spec("flash_attn") is None):
        problems.append(
            f"--attn_implementation {args.attn_implementation} needs a GPU and the flash-attn "
            "package (pip install flash-attn); use sdpa or eager otherwise"
        )
    if args.use_liger_kernel and (accelerator == "cpu" or importlib.util.find_spec("liger_kernel") is None):
        problems.append(
            "--use_liger_kernel needs a GPU and the liger-kernel package (pip install liger-kernel)"
        )
    return problems


def combination_problems(args: argparse.Namespace) -> list[str]:
    """Flags that only make sense together."""
    problems = []
    if args.zero_stage not in ZERO_STAGES:
        problems.append(f"--zero_stage {args.zero_stage}: ZeRO stages are 0, 1, 2, 3")
    if args.save_lora_adapter and (args.lora_dim <= 0 or not args.output_dir):
        problems.append("--save_lora_adapter needs --lora_dim > 0 and --output_dir")
    if (args.save_interval or args.resume) and not args.output_dir:
        problems.append(
            "--save_interval and --resume need --output_dir (checkpoints live in <output_dir>/checkpoints)"
        )
    if args.offload and args.zero_stage == 0:
        problems.append("--offload needs --zero_stage 1, 2 or 3 (ZeRO-Offload moves ZeRO's optimizer state)")
    if args.only_optimize_lora and args.lora_dim <= 0:
        problems.append("--only_optimize_lora needs --lora_dim > 0 (otherwise nothing would train)")
    resuming = bool(args.resume or args.resume_from)
    if problem := existing_run_problem(
        args.output_dir, args.model_name_or_path, resuming, args.overwrite_output_dir
    ):
        problems.append(problem)
    if getattr(args, "deepspeed_config", None):
        problems.append(
            "--deepspeed_config cannot be used: main.py builds the config; use --ds_config_override"
        )
    return problems


def value_problems(args: argparse.Namespace) -> list[str]:
    """Single flags outside their allowed values (the tables, the blend weights, the DeepSpeed override)."""
    problems = [
        f"--{flag} {getattr(args, flag)}: must be at least {least}"
        for flag, least in AT_LEAST
        if getattr(args, flag) < least
    ]
    problems += [p for bounds in IN_BOUNDS if (p := bounds.problem(getattr(args, bounds.flag)))]
    if (problem := data_weights_problem(args.data_weights, len(args.data_path))) is not None:
        problems.append(problem)
    if args.zero_stage in ZERO_STAGES and (
        problem := override_problem(section_from_args(EngineConfig, args))
    ):
        problems.append(problem)
    return problems


def validate_train_args(args: argparse.Namespace, accelerator: str, fp16_ok: bool, bf16_ok: bool) -> None:
    """Collect every problem with the flags and raise them together as one DschatError."""
    problems = (
        value_problems(args)
        + combination_problems(args)
        + precision_problems(args, accelerator, fp16_ok, bf16_ok)
    )
    try:
        parse_data_split(args.data_split)
    except DschatError as err:
        problems.append(str(err))
    if (problem := model_source_problem(args.model_name_or_path, need_config=True)) is not None:
        problems.append(problem)
    for flag in ("output_dir", "data_output_path"):
        if getattr(args, flag) and (problem := unwritable_dir_problem(getattr(args, flag))):
            problems.append(f"--{flag} {getattr(args, flag)!r} {problem}")
    if problems:
        raise DschatError("; ".join(problems))
