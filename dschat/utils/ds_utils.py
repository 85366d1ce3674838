"""DeepSpeed config dicts for training and evaluation: values in, plain dict out.

The builders reproduce upstream DeepSpeed-Chat's dicts key for key (spec section 5), plus one addition:
``dtype="fp32"`` leaves out the precision block, which is DeepSpeed's plain fp32 path.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from dschat.config import DTYPES, ZERO_STAGES, BatchConfig, EngineConfig
from dschat.errors import DschatError, quote

logger = logging.getLogger(__name__)

# Placeholders that upstream's builders emit; step 1 overwrites both with set_batch_sizes.
GLOBAL_BATCH_SIZE = 32
MICRO_BATCH_SIZE = 4


# fp16 waits this many overflow-free steps before raising the dynamic loss scale (DeepSpeed's default: 1000).
FP16_LOSS_SCALE_WINDOW = 100
_JSON_TYPES = {float: "number", str: "string", list: "array", dict: "object", type(None): "null"}


def _precision_block(dtype: str, loss_scale_window: int | None) -> dict[str, dict[str, Any]]:
    """The {key: block} precision entry for ``dtype``; empty for fp32."""
    if dtype == "fp16":
        block: dict[str, Any] = {"enabled": True}
        if loss_scale_window is not None:
            block["loss_scale_window"] = loss_scale_window
        return {"fp16": block}
    if dtype == "bf16":
        # Upstream spells the key "bfloat16"; DeepSpeed still accepts it as an alias of "bf16".
        return {"bfloat16": {"enabled": True}}
    if dtype == "fp32":
        return {}
    raise DschatError(f"unknown dtype {dtype!r} for the DeepSpeed config; choose one of {', '.join(DTYPES)}")


def _check_stage(stage: int) -> None:
    if stage not in ZERO_STAGES:
        raise DschatError(f"--zero_stage {stage!r} is not a ZeRO stage; choose one of 0, 1, 2, 3")


def _offload_device(offload: bool) -> str:
    # Upstream offloads parameters as well as optimizer state, even below stage 3 where DeepSpeed ignores it.
    return "cpu" if offload else "none"


def get_train_ds_config(
    offload: bool,
    dtype: str,
    stage: int = 2,
    enable_hybrid_engine: bool = False,
    inference_tp_size: int = 1,
    release_inference_cache: bool = False,
    pin_parameters: bool = True,
    tp_gather_partition_size: int = 8,
    max_out_tokens: int = 512,
    enable_tensorboard: bool = False,
    enable_mixed_precision_lora: bool = False,
    tb_path: str = "",
    tb_name: str = "",
    *,
    world_size: int = 1,
    devices_per_node: int = 1,
) -> dict[str, Any]:
    """Upstream's training config (spec 5.1); batch sizes are placeholders until set_batch_sizes.

    Upstream's public signature: the step-3 knobs (hybrid engine, inference TP, mixed-precision LoRA) shape
    blocks every upstream config carries, so they stay; the function is long because the dict is upstream's,
    key for key.

    ``world_size`` and ``devices_per_node`` replace upstream's reads of torch.distributed and the
    accelerator; they matter only with ``enable_mixed_precision_lora`` (never in step 1).
    """
    _check_stage(stage)
    device = _offload_device(offload)
    precision = _precision_block(dtype, loss_scale_window=FP16_LOSS_SCALE_WINDOW)
    zero = {
        "stage": stage,
        "overlap_comm": True,
        "offload_param": {"device": device},
        "offload_optimizer": {"device": device},
        "stage3_param_persistence_threshold": 1e4,
        "stage3_max_live_parameters": 3e7,
        "stage3_prefetch_bucket_size": 3e7,
        "memory_efficient_linear": False,
    }
    if enable_mixed_precision_lora:
        zero["zero_quantized_nontrainable_weights"] = True
        if world_size != devices_per_node:
            # Multi-node: keep a secondary partition of the weights inside each node (ZeRO++ hpZ).
            zero["zero_hpz_partition_size"] = devices_per_node
    return {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": zero,
        **precision,
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
        "hybrid_engine": {
            "enabled": enable_hybrid_engine,
            "max_out_tokens": max_out_tokens,
            "inference_tp_size": inference_tp_size,
            "release_inference_cache": release_inference_cache,
            "pin_parameters": pin_parameters,
            "tp_gather_partition_size": tp_gather_partition_size,
        },
        "tensorboard": {
            "enabled": enable_tensorboard,
            "output_path": f"{tb_path}/ds_tensorboard_logs/",
            "job_name": f"{tb_name}_tensorboard",
        },
    }


def get_eval_ds_config(offload: bool, dtype: str, stage: int = 0) -> dict[str, Any]:
    """Upstream's inference-only config (spec 5.2): no hybrid engine, no tensorboard, no loss scale window."""
    _check_stage(stage)
    return {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": {
            "stage": stage,
            "stage3_param_persistence_threshold": 1e4,
            "offload_param": {"device": _offload_device(offload)},
            "memory_efficient_linear": False,
        },
        **_precision_block(dtype, loss_scale_window=None),
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }


def set_batch_sizes(
    ds_config: dict[str, Any],
    per_device_train_batch_size: int,
    world_size: int,
    gradient_accumulation_steps: int,
) -> dict[str, Any]:
    """A copy of ``ds_config`` with micro batch B and global batch B x world x GAS (spec 1, step 2)."""
    sizes = {
        "--per_device_train_batch_size": per_device_train_batch_size,
        "world size": world_size,
        "--gradient_accumulation_steps": gradient_accumulation_steps,
    }
    bad = [f"{name} = {value!r}" for name, value in sizes.items() if not isinstance(value, int) or value < 1]
    if bad:
        raise DschatError(f"batch sizes must be positive integers: {', '.join(bad)}")
    config = dict(ds_config)
    config["train_micro_batch_size_per_gpu"] = per_device_train_batch_size
    config["train_batch_size"] = per_device_train_batch_size * world_size * gradient_accumulation_steps
    return config


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``override`` on top of ``base``, nested dicts merged, everything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _json_type(value: Any) -> str:
    """The JSON type name of a parsed value (bool and int are different types, as in DeepSpeed's schema)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _article(type_name: str) -> str:
    return f"{'an' if type_name[0] in 'aeiou' else 'a'} {type_name}"


def type_mismatches(base: dict[str, Any], override: dict[str, Any], prefix: str = "") -> list[str]:
    """Override values whose JSON type differs from the built config's value at the same key path.

    Keys the built config does not have are DeepSpeed's to check; an integer is accepted for a number.
    """
    found = []
    for key, value in override.items():
        if key not in base:
            continue
        path, expected = f"{prefix}{key}", base[key]
        if isinstance(expected, dict) and isinstance(value, dict):
            found += type_mismatches(expected, value, f"{path}.")
            continue
        wanted, given = _json_type(expected), _json_type(value)
        if given != wanted and not (wanted == "number" and given == "integer"):
            shown = "" if isinstance(value, (dict, list)) else f" ({quote(value, 40)})"
            example = "" if isinstance(expected, (dict, list)) else f" like {json.dumps(expected)}"
            found.append(f'"{path}" is {_article(given)}{shown}, expected {_article(wanted)}{example}')
    return found


def load_config_override(path: str | Path) -> dict[str, Any]:
    """Read a JSON object to merge over the built DeepSpeed config (``--ds_config_override FILE``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DschatError(
            f"--ds_config_override: cannot read {path}: {getattr(err, 'strerror', None) or err}"
        ) from err
    try:
        override = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as err:
        raise DschatError(
            f"--ds_config_override: {path}:{err.lineno}:{err.colno}: invalid JSON ({err.msg}); "
            'the file must hold one JSON object such as {"zero_optimization": {"overlap_comm": false}}'
        ) from err
    except RecursionError:
        raise DschatError(
            f"--ds_config_override: {path}: the JSON nests too deeply to parse; a DeepSpeed config is a few "
            "levels of objects"
        ) from None
    except ValueError as err:
        raise DschatError(
            f"--ds_config_override: {path}: {err}; each key may appear once per object"
        ) from err
    if not isinstance(override, dict):
        raise DschatError(
            f"--ds_config_override: {path}: top level is a JSON {type(override).__name__}, "
            "expected an object of DeepSpeed config keys"
        )
    return override


def checked_override(path: str | Path, base: dict[str, Any]) -> dict[str, Any]:
    """The override file's object, each key it shares with the built ``base`` config holding the same JSON type."""
    override = load_config_override(path)
    mismatches = type_mismatches(base, override)
    if mismatches:
        raise DschatError(
            f"--ds_config_override: {path}: {'; '.join(mismatches)}. Fix: write each value with the type DeepSpeed "
            "expects (numbers unquoted, true/false for switches, objects for blocks)"
        )
    return override


def _base_train_config(engine: EngineConfig) -> dict[str, Any]:
    """Upstream's step-1 training config for these engine settings (batch sizes still placeholders)."""
    return get_train_ds_config(
        offload=engine.offload,
        dtype=engine.dtype,
        stage=engine.zero_stage,
        enable_tensorboard=engine.enable_tensorboard,
        tb_path=engine.tensorboard_path,
        tb_name="step1_model",
    )


def override_problem(engine: EngineConfig) -> str | None:
    """Why ``--ds_config_override`` cannot be merged (unreadable, not an object, a value of the wrong type), or None.

    Run by the flag checks, before anything is loaded; the types do not depend on batch sizes or world size.
    """
    if not engine.ds_config_override:
        return None
    try:
        checked_override(engine.ds_config_override, _base_train_config(engine))
    except DschatError as err:
        return str(err)
    return None


def train_ds_config(engine: EngineConfig, batch: BatchConfig, world_size: int) -> dict[str, Any]:
    """Upstream's step-1 DeepSpeed config for this run, batch sizes set, ``--ds_config_override`` merged."""
    config = set_batch_sizes(
        _base_train_config(engine),
        batch.per_device_train_batch_size,
        world_size,
        batch.gradient_accumulation_steps,
    )
    if engine.ds_config_override:
        override = checked_override(engine.ds_config_override, config)
        logger.info(
            "DeepSpeed config override from %s: %s",
            engine.ds_config_override,
            json.dumps(override, sort_keys=True),
        )
        config = deep_merge(config, override)
        logger.info("DeepSpeed config after --ds_config_override:\n%s", json.dumps(config, indent=2))
    return config
