"""Step-1 flags: upstream's names, types and defaults, dschat's additions in their own group, one validator."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os

import deepspeed
from transformers import SchedulerType

from dschat.errors import DschatError
from dschat.utils import ds_utils
from dschat.utils.cli_args import add_data_args, add_tokenizer_args
from dschat.utils.data.splits import parse_data_split
from dschat.utils.ds_utils import DTYPES, ZERO_STAGES
from dschat.utils.loaders import PADDING_CHOICES

logger = logging.getLogger(__name__)

SAVE_FORMATS = ("safetensors", "pytorch_bin")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Upstream's training, precision, LoRA and logging flags with upstream's defaults."""
    group = parser.add_argument_group("training (upstream)")
    group.add_argument(
        "--per_device_train_batch_size", type=int, default=16, help="Micro-batch size per device."
    )
    group.add_argument(
        "--per_device_eval_batch_size", type=int, default=16, help="Eval batch size per device."
    )
    group.add_argument(
        "--learning_rate", type=float, default=1e-3, help="Initial learning rate (after warmup)."
    )
    group.add_argument("--weight_decay", type=float, default=0.0, help="Weight decay of the decay groups.")
    group.add_argument("--num_train_epochs", type=int, default=1, help="Passes over the training data.")
    group.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="Micro-batches accumulated per optimizer update.",
    )
    group.add_argument(
        "--lr_scheduler_type",
        type=SchedulerType,
        default="cosine",
        choices=[
            "linear",
            "cosine",
            "cosine_with_restarts",
            "polynomial",
            "constant",
            "constant_with_warmup",
        ],
        help="The LR schedule (transformers get_scheduler).",
    )
    group.add_argument("--num_warmup_steps", type=int, default=0, help="Warmup in optimizer updates.")
    group.add_argument(
        "--output_dir", type=str, default=None, help="Where to save the model (None: not saved)."
    )
    group.add_argument("--local_rank", type=int, default=-1, help="Set by the deepspeed launcher.")
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Enable HF gradient checkpointing."
    )
    group.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="Override the model's dropout, attention_dropout, hidden_dropout, activation_dropout.",
    )
    group.add_argument(
        "--offload", action="store_true", help="ZeRO-Offload: parameters and optimizer to CPU."
    )
    group.add_argument(
        "--dtype",
        type=str,
        default="fp16",
        choices=list(DTYPES),
        help="Training precision; fp32 (dschat) is DeepSpeed's plain fp32 path, the one for CPUs.",
    )
    group.add_argument("--zero_stage", type=int, default=0, help="ZeRO optimization stage (0-3).")
    group.add_argument("--lora_dim", type=int, default=0, help="LoRA rank; > 0 enables LoRA.")
    group.add_argument(
        "--lora_module_name",
        type=str,
        default="decoder.layers.",
        help="Linear layers whose name contains this get LoRA.",
    )
    group.add_argument("--only_optimize_lora", action="store_true", help="Train only the LoRA parameters.")
    group.add_argument(
        "--lora_learning_rate", type=float, default=5e-4, help="Learning rate of LoRA parameters."
    )
    group.add_argument("--compute_fp32_loss", action="store_true", help="Compute the loss in fp32.")
    group.add_argument(
        "--enable_tensorboard", action="store_true", help="Enable DeepSpeed's tensorboard monitor."
    )
    group.add_argument(
        "--tensorboard_path", type=str, default="step1_tensorboard", help="Tensorboard base dir."
    )
    group.add_argument("--print_loss", action="store_true", help="Print every rank's loss each micro-step.")


def add_dschat_args(parser: argparse.ArgumentParser) -> None:
    """Flags upstream does not have; defaults keep upstream's behaviour."""
    group = parser.add_argument_group("dschat additions")
    group.add_argument(
        "--max_steps",
        type=int,
        default=0,
        help="Stop after this many optimizer updates (0: run all epochs). The LR schedule stays "
        "the full run's, so a short run's losses equal the first steps of the full run.",
    )
    group.add_argument(
        "--eval_interval",
        type=int,
        default=0,
        help="Also evaluate every N micro-steps (0: only before training and after each epoch).",
    )
    group.add_argument("--log_interval", type=int, default=10, help="Log throughput every N micro-steps.")
    group.add_argument(
        "--ds_config_override",
        type=str,
        default=None,
        help="JSON file deep-merged over the built DeepSpeed config (the result is logged).",
    )
    group.add_argument(
        "--shuffle_each_epoch",
        action="store_true",
        help="Reshuffle the training data every epoch (upstream repeats the same order).",
    )
    group.add_argument(
        "--lora_alpha",
        type=float,
        default=1.0,
        help="LoRA scaling numerator: scaling = lora_alpha / lora_dim (upstream: fixed at 1).",
    )
    group.add_argument(
        "--lora_dropout",
        type=float,
        default=0.0,
        help="Dropout on the LoRA branch input (upstream: 0 in step 1).",
    )
    group.add_argument(
        "--padding",
        choices=PADDING_CHOICES,
        default="auto",
        help="longest: pad each batch to its longest sample (same loss, less compute); max_length: upstream's "
        "padding to --max_seq_len; auto: longest unless the model uses dropout (then max_length, so a seeded run "
        "draws upstream's dropout masks).",
    )
    group.add_argument(
        "--pad_to_max_len", action="store_true", help="Same as --padding max_length (upstream)."
    )
    group.add_argument(
        "--group_by_length",
        action="store_true",
        help="Batches of similar length (seeded megabatch sort, batches shuffled): less padding. Upstream: off.",
    )
    group.add_argument(
        "--packing",
        action="store_true",
        help="Pack several samples into each --max_seq_len row; attention never crosses samples and positions "
        "restart, so per-sample losses are unchanged. Upstream: off.",
    )
    group.add_argument(
        "--attn_implementation",
        type=str,
        default=None,
        help="Attention kernel passed to from_pretrained: eager, sdpa, flash_attention_2 (GPU, needs flash-attn).",
    )
    group.add_argument(
        "--use_liger_kernel",
        action="store_true",
        help="Patch the model with Liger's fused kernels (GPU; needs the liger-kernel package).",
    )
    group.add_argument(
        "--save_lora_adapter",
        action="store_true",
        help="Also write <output_dir>/lora_adapter/ in PEFT's LoRA format (adapter_config.json + "
        "adapter_model.safetensors) for peft.PeftModel.from_pretrained(base, dir). Needs --lora_dim > 0.",
    )
    group.add_argument(
        "--save_interval",
        type=int,
        default=0,
        help="Write a DeepSpeed checkpoint (model, optimizer, scheduler, RNG, data position) to "
        "<output_dir>/checkpoints every N optimizer updates (0: none; upstream has none).",
    )
    group.add_argument("--save_total_limit", type=int, default=2, help="Checkpoints to keep (0: all).")
    group.add_argument(
        "--resume", action="store_true", help="Continue from the latest checkpoint in --output_dir."
    )
    group.add_argument(
        "--resume_from", type=str, default=None, help="Continue from this checkpoint directory."
    )
    group.add_argument(
        "--max_bad_steps",
        type=int,
        default=0,
        help="Skip up to N micro-steps whose loss is NaN/inf (0: stop at the first, keeping the last checkpoint).",
    )
    group.add_argument(
        "--dry_run",
        action="store_true",
        help="Check flags, paths and data, print the plan (batches, steps, ZeRO, memory estimate) "
        "and exit without loading weights or training.",
    )
    group.add_argument(
        "--save_format",
        choices=SAVE_FORMATS,
        default="safetensors",
        help="Weights file: model.safetensors, or upstream's pytorch_model.bin.",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse step-1 flags (upstream's, DeepSpeed's and dschat's)."""
    parser = argparse.ArgumentParser(
        description="Finetune a transformers model on a causal language modeling task"
    )
    add_data_args(parser)
    add_tokenizer_args(parser)
    add_training_args(parser)
    add_dschat_args(parser)
    parser = deepspeed.add_config_arguments(parser)
    return parser.parse_args(argv)


def model_path_problem(path: str) -> str | None:
    """A message when ``path`` can be neither a local model dir nor a hub id (``name`` or ``org/name``)."""
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "config.json")):
            return None
        return f"--model_name_or_path {path!r} has no config.json: point it at a Hugging Face model directory"
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") > 1:
        return f"--model_name_or_path {path!r} is not a model directory: give a local model dir or a hub id (org/name)"
    return None


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


def validate_args(args: argparse.Namespace, accelerator_name: str, fp16_ok: bool, bf16_ok: bool) -> None:
    """Collect every cross-flag problem and raise them together as one DschatError."""
    problems = []
    if args.zero_stage not in ZERO_STAGES:
        problems.append(f"--zero_stage {args.zero_stage}: ZeRO stages are 0, 1, 2, 3")
    for flag in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "log_interval",
    ):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} {getattr(args, flag)}: must be at least 1")
    for flag in ("max_steps", "eval_interval", "num_warmup_steps", "lora_dim"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} {getattr(args, flag)}: must be 0 or more")
    for flag in ("save_interval", "save_total_limit", "max_bad_steps"):
        if getattr(args, flag) < 0:
            problems.append(f"--{flag} {getattr(args, flag)}: must be 0 or more")
    if args.save_lora_adapter and (args.lora_dim <= 0 or not args.output_dir):
        problems.append("--save_lora_adapter needs --lora_dim > 0 and --output_dir")
    if (args.save_interval or args.resume) and not args.output_dir:
        problems.append(
            "--save_interval and --resume need --output_dir (checkpoints live in <output_dir>/checkpoints)"
        )
    if args.max_seq_len < 2:
        problems.append(f"--max_seq_len {args.max_seq_len}: need at least 2 tokens (an input and a target)")
    if args.dtype == "fp16" and (accelerator_name == "cpu" or not fp16_ok):
        # DeepSpeed's CPU accelerator may claim fp16 (mkldnn), but fp16 training on CPU is not a supported path.
        problems.append(f"--dtype fp16 is not supported on {accelerator_name}: use --dtype fp32 (or bf16)")
    if args.dtype == "bf16" and not bf16_ok:
        problems.append(f"--dtype bf16 is not supported on {accelerator_name}: use --dtype fp16 or fp32")
    if args.offload and args.zero_stage == 0:
        problems.append("--offload needs --zero_stage 1, 2 or 3 (ZeRO-Offload moves ZeRO's optimizer state)")
    if args.only_optimize_lora and args.lora_dim <= 0:
        problems.append("--only_optimize_lora needs --lora_dim > 0 (otherwise nothing would train)")
    if args.attn_implementation and args.attn_implementation.startswith("flash_attention"):
        if accelerator_name == "cpu" or importlib.util.find_spec("flash_attn") is None:
            problems.append(f"--attn_implementation {args.attn_implementation} needs a GPU and the flash-attn "
                            "package (pip install flash-attn); use sdpa or eager otherwise")  # fmt: skip
    if args.use_liger_kernel and (
        accelerator_name == "cpu" or importlib.util.find_spec("liger_kernel") is None
    ):
        problems.append(
            "--use_liger_kernel needs a GPU and the liger-kernel package (pip install liger-kernel)"
        )
    if getattr(args, "deepspeed_config", None):
        problems.append(
            "--deepspeed_config cannot be used: main.py builds the config; use --ds_config_override"
        )
    try:
        parse_data_split(args.data_split)
    except DschatError as err:
        problems.append(str(err))
    if (problem := model_path_problem(args.model_name_or_path)) is not None:
        problems.append(problem)
    for flag in ("output_dir", "data_output_path"):
        if getattr(args, flag) and (problem := unwritable_dir_problem(getattr(args, flag))):
            problems.append(f"--{flag} {getattr(args, flag)!r} {problem}")
    if problems:
        raise DschatError("; ".join(problems))


def run_info(args: argparse.Namespace) -> dict:
    """What the output dir records about the run: the prompt format (chat and eval default to it) and all flags."""
    from dschat import __version__

    flags = {
        key: value if isinstance(value, (int, float, str, bool, list, type(None))) else str(value)
        for key, value in vars(args).items()
    }
    return {
        "dschat_version": __version__,
        "prompt_template": args.prompt_template,
        "eos_token_appended": args.prompt_template == "upstream",
        "args": flags,
    }


def train_ds_config(args: argparse.Namespace, world_size: int) -> dict:
    """Upstream's step-1 DeepSpeed config for these flags, batch sizes set, ``--ds_config_override`` merged."""
    config = ds_utils.get_train_ds_config(
        offload=args.offload,
        dtype=args.dtype,
        stage=args.zero_stage,
        enable_tensorboard=args.enable_tensorboard,
        tb_path=args.tensorboard_path,
        tb_name="step1_model",
    )
    config = ds_utils.set_batch_sizes(
        config, args.per_device_train_batch_size, world_size, args.gradient_accumulation_steps
    )
    if args.ds_config_override:
        config = ds_utils.deep_merge(config, ds_utils.load_config_override(args.ds_config_override))
        logger.info("DeepSpeed config after --ds_config_override:\n%s", json.dumps(config, indent=2))
    return config
