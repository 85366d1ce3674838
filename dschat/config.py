"""The step-1 run as one frozen, typed config: a section per stage, built once from validated flags.

Every stage receives its own section (``cfg.data``, ``cfg.lora``, ...), never the argparse Namespace. The
resume fingerprint is derived from the fields: each field is checked on ``--resume`` unless it is declared
``free`` (a setting a resumed run may change without changing what it trains). Stdlib only: every layer may
import this module.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dschat.clean.config import CleanConfig

from dschat.utils.data.prompts import UPSTREAM

DTYPES = ("fp16", "bf16", "fp32")
ZERO_STAGES = (0, 1, 2, 3)
PADDING_CHOICES = ("auto", "free", "longest", "max_length")
# micro_batch: upstream (each micro-batch its own token mean, micro-batches and ranks averaged); token: every
# loss-bearing token of an optimizer step weighs the same, however the step is cut (dschat.utils.loss_normalization).
LOSS_NORMALIZATIONS = ("micro_batch", "token")
SAVE_FORMATS = ("safetensors", "pytorch_bin")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
FINGERPRINT_VERSION = 4  # 3: the training data's digest; 4: the cluster shape apart; bump when a field's meaning changes, so old checkpoints are not trusted silently


def free(default: Any = None) -> Any:
    """A field a resumed run may change (where to write, how often to log) without changing the training."""
    return field(default=default, metadata={"free": True})


def shape(default: Any = None) -> Any:
    """How the global batch is cut over ranks and micro-batches, and how ZeRO shards the state: a resumed run
    may change it (another cluster shape) when the global batch stays (see ``TrainConfig.shape``)."""
    return field(default=default, metadata={"shape": True})


@dataclass(frozen=True)
class ModelConfig:
    """What model is trained and how it is built (tokenizer, dropout, kernels)."""

    model_name_or_path: str
    add_eot_token: bool = False
    eot_token: str = "<|endoftext|>"
    trust_remote_code: bool = False
    dropout: float | None = None
    attn_implementation: str | None = None
    use_liger_kernel: bool = False
    compute_fp32_loss: bool = False
    lm_loss: str = "chunked"  # "full": transformers' loss over every position's logits
    # "full": autograd's SiLU-gated MLP; the same maths, so a resume may change it
    activation_memory: str = free("lean")
    gradient_checkpointing: bool = False

    @property
    def added_special_token(self) -> str | None:
        """The token upstream adds to the tokenizer with --add_eot_token (never appended to samples)."""
        return self.eot_token if self.add_eot_token else None


@dataclass(frozen=True)
class DataConfig:
    """Which samples a run trains on: sources, split, template, length, seed."""

    data_path: tuple[str, ...] = ("Dahoas/rm-static",)
    data_split: str = "2,4,4"
    sft_only_data_path: tuple[str, ...] = ()
    data_output_path: str = free("/tmp/data_files/")
    max_seq_len: int = 512
    seed: int = 1234
    prompt_template: str = UPSTREAM
    data_weights: tuple[float, ...] | None = None
    train_on_prompt: bool = True
    reload_data: bool = free(False)
    clean: CleanConfig | None = None  # --clean_data: the cleaning rules applied before the split (None: off)


@dataclass(frozen=True)
class BatchConfig:
    """How samples become micro-batches and updates."""

    per_device_train_batch_size: int = shape(16)
    per_device_eval_batch_size: int = free(16)
    gradient_accumulation_steps: int = shape(1)
    padding: str = "auto"  # --pad_to_max_len is folded in as "max_length"
    group_by_length: bool = False
    packing: bool = False
    shuffle_each_epoch: bool = False
    loss_normalization: str = "micro_batch"  # changes the gradient: part of the resume fingerprint


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and LR schedule."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_train_epochs: int = 1
    lr_scheduler_type: str = "cosine"
    num_warmup_steps: int = 0


@dataclass(frozen=True)
class LoraConfig:
    """LoRA layers (rank 0: off) and their training."""

    lora_dim: int = 0
    lora_module_name: str = "decoder.layers."
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    only_optimize_lora: bool = False
    lora_learning_rate: float = 5e-4

    @property
    def enabled(self) -> bool:
        return self.lora_dim > 0


@dataclass(frozen=True)
class EngineConfig:
    """DeepSpeed: precision, ZeRO stage, offload and its monitors."""

    dtype: str = "fp16"
    zero_stage: int = shape(0)
    offload: bool = False
    enable_tensorboard: bool = free(False)
    tensorboard_path: str = free("step1_tensorboard")
    ds_config_override: str | None = free(None)
    dist_timeout: float = free(10.0)


@dataclass(frozen=True)
class LoopConfig:
    """When the loop stops, evaluates, logs and checkpoints."""

    max_steps: int = free(0)
    eval_interval: int = free(0)
    log_interval: int = free(10)
    print_loss: bool = free(False)
    save_interval: int = free(0)
    save_total_limit: int = free(2)
    max_bad_steps: int = free(0)


@dataclass(frozen=True)
class OutputConfig:
    """Where the run writes and what the final save holds."""

    output_dir: str | None = free(None)
    save_format: str = free("safetensors")
    save_lora_adapter: bool = free(False)
    resume: bool = free(False)
    overwrite_output_dir: bool = free(False)
    resume_from: str | None = free(None)
    dry_run: bool = free(False)


@dataclass(frozen=True)
class TrainConfig:
    """One step-1 run, section by section."""

    model: ModelConfig
    data: DataConfig
    batch: BatchConfig
    optim: OptimConfig
    lora: LoraConfig
    engine: EngineConfig
    loop: LoopConfig
    output: OutputConfig

    def fingerprint(self, world_size: int, data_digest: str) -> dict:
        """The settings a resumed run must share with the original for its steps to continue exactly.

        ``data_digest`` is the tokenised data's identity: an edited data file changes the order and content
        of the remaining steps, so it is refused like a changed flag.
        """
        values: dict[str, Any] = {
            "fingerprint_version": FINGERPRINT_VERSION,
            "global_batch": self.global_batch(world_size),
            "data_digest": data_digest,
        }
        for section in fields(self):
            part = getattr(self, section.name)
            for item in fields(part):
                if not item.metadata.get("free") and not item.metadata.get("shape"):
                    values[f"{section.name}.{item.name}"] = jsonable(getattr(part, item.name))
        return values

    def global_batch(self, world_size: int) -> int:
        """Samples per optimizer update over all ranks: what the maths depends on, however it is cut."""
        return self.batch.per_device_train_batch_size * self.batch.gradient_accumulation_steps * world_size

    def shape(self, world_size: int) -> dict:
        """The cluster shape a checkpoint was written with (a resume on another one converts the checkpoint)."""
        values = {"world_size": world_size}
        for section in fields(self):
            part = getattr(self, section.name)
            for item in fields(part):
                if item.metadata.get("shape"):
                    values[item.name] = getattr(part, item.name)
        return values

    def flags(self) -> dict:
        """Every setting by its flag name, JSON-ready (what dschat_run.json records)."""
        return {
            item.name: jsonable(getattr(getattr(self, section.name), item.name))
            for section in fields(self)
            for item in fields(getattr(self, section.name))
        }


def jsonable(value: Any) -> Any:
    """Tuples as lists (a fingerprint compares equal after a JSON round trip), a cleaning config as its key."""
    if hasattr(value, "cache_fields"):
        return value.cache_fields()
    return list(value) if isinstance(value, tuple) else value


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "batch": BatchConfig,
    "optim": OptimConfig,
    "lora": LoraConfig,
    "engine": EngineConfig,
    "loop": LoopConfig,
    "output": OutputConfig,
}
SEQUENCE_FLAGS = ("data_path", "sft_only_data_path", "data_weights")


def _flag_values(args: argparse.Namespace) -> dict:
    """The Namespace as plain values: lists as tuples, the scheduler enum as its name, padding resolved."""
    values = dict(vars(args))
    for name in SEQUENCE_FLAGS:
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    if "lr_scheduler_type" in values:
        values["lr_scheduler_type"] = str(
            getattr(values["lr_scheduler_type"], "value", values["lr_scheduler_type"])
        )
    if values.get("pad_to_max_len"):
        values["padding"] = "max_length"
    if values.get("clean_data"):
        from dschat.clean.config import CleanConfig  # stdlib-only too

        values["clean"] = CleanConfig.from_namespace(args)
    return values


def section_from_args(cls: type, args: argparse.Namespace) -> Any:
    """One section from a Namespace holding (at least) its flags (prepare_data, clean, tests)."""
    values = _flag_values(args)
    return cls(**{item.name: values[item.name] for item in fields(cls) if item.name in values})


def from_args(args: argparse.Namespace) -> TrainConfig:
    """The typed config of validated step-1 flags (the only place that reads main.py's Namespace)."""
    return TrainConfig(**{name: section_from_args(cls, args) for name, cls in SECTIONS.items()})
