"""The DeepSpeed config builders against upstream's tables (spec 5), and DeepSpeed 0.19 accepting them."""

from __future__ import annotations

import json

import pytest

from dschat.errors import DschatError
from dschat.utils import ds_utils
from dschat.utils.ds_utils import (
    deep_merge,
    get_eval_ds_config,
    get_train_ds_config,
    load_config_override,
    set_batch_sizes,
)


def same(actual: dict, expected: dict) -> bool:
    """Equal values, equal key order, equal types (10000.0 is not 10000): compare the JSON text."""
    return json.dumps(actual) == json.dumps(expected)


# Step 1's call with upstream's defaults: --dtype fp16, --zero_stage 0, no offload, no tensorboard.
STEP1_DEFAULT = {
    "train_batch_size": 32,
    "train_micro_batch_size_per_gpu": 4,
    "steps_per_print": 10,
    "zero_optimization": {
        "stage": 0,
        "overlap_comm": True,
        "offload_param": {"device": "none"},
        "offload_optimizer": {"device": "none"},
        "stage3_param_persistence_threshold": 10000.0,
        "stage3_max_live_parameters": 30000000.0,
        "stage3_prefetch_bucket_size": 30000000.0,
        "memory_efficient_linear": False,
    },
    "fp16": {"enabled": True, "loss_scale_window": 100},
    "gradient_clipping": 1.0,
    "prescale_gradients": False,
    "wall_clock_breakdown": False,
    "hybrid_engine": {
        "enabled": False,
        "max_out_tokens": 512,
        "inference_tp_size": 1,
        "release_inference_cache": False,
        "pin_parameters": True,
        "tp_gather_partition_size": 8,
    },
    "tensorboard": {
        "enabled": False,
        "output_path": "step1_tensorboard/ds_tensorboard_logs/",
        "job_name": "step1_model_tensorboard",
    },
}

# --dtype bf16 --zero_stage 3 --offload --enable_tensorboard --tensorboard_path /out
BF16_Z3_OFFLOAD_TB = {
    "train_batch_size": 32,
    "train_micro_batch_size_per_gpu": 4,
    "steps_per_print": 10,
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "offload_param": {"device": "cpu"},
        "offload_optimizer": {"device": "cpu"},
        "stage3_param_persistence_threshold": 10000.0,
        "stage3_max_live_parameters": 30000000.0,
        "stage3_prefetch_bucket_size": 30000000.0,
        "memory_efficient_linear": False,
    },
    "bfloat16": {"enabled": True},
    "gradient_clipping": 1.0,
    "prescale_gradients": False,
    "wall_clock_breakdown": False,
    "hybrid_engine": {
        "enabled": False,
        "max_out_tokens": 512,
        "inference_tp_size": 1,
        "release_inference_cache": False,
        "pin_parameters": True,
        "tp_gather_partition_size": 8,
    },
    "tensorboard": {
        "enabled": True,
        "output_path": "/out/ds_tensorboard_logs/",
        "job_name": "step1_model_tensorboard",
    },
}

# --dtype fp32 (ours) at stage 2, builder defaults for everything else: no precision block at all.
FP32_Z2 = {
    "train_batch_size": 32,
    "train_micro_batch_size_per_gpu": 4,
    "steps_per_print": 10,
    "zero_optimization": {
        "stage": 2,
        "overlap_comm": True,
        "offload_param": {"device": "none"},
        "offload_optimizer": {"device": "none"},
        "stage3_param_persistence_threshold": 10000.0,
        "stage3_max_live_parameters": 30000000.0,
        "stage3_prefetch_bucket_size": 30000000.0,
        "memory_efficient_linear": False,
    },
    "gradient_clipping": 1.0,
    "prescale_gradients": False,
    "wall_clock_breakdown": False,
    "hybrid_engine": {
        "enabled": False,
        "max_out_tokens": 512,
        "inference_tp_size": 1,
        "release_inference_cache": False,
        "pin_parameters": True,
        "tp_gather_partition_size": 8,
    },
    "tensorboard": {"enabled": False, "output_path": "/ds_tensorboard_logs/", "job_name": "_tensorboard"},
}

# Step-3 style: hybrid engine with every knob moved, mixed-precision LoRA on 2 nodes x 8 devices.
HYBRID_MIXED_LORA = {
    "train_batch_size": 32,
    "train_micro_batch_size_per_gpu": 4,
    "steps_per_print": 10,
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "offload_param": {"device": "none"},
        "offload_optimizer": {"device": "none"},
        "stage3_param_persistence_threshold": 10000.0,
        "stage3_max_live_parameters": 30000000.0,
        "stage3_prefetch_bucket_size": 30000000.0,
        "memory_efficient_linear": False,
        "zero_quantized_nontrainable_weights": True,
        "zero_hpz_partition_size": 8,
    },
    "fp16": {"enabled": True, "loss_scale_window": 100},
    "gradient_clipping": 1.0,
    "prescale_gradients": False,
    "wall_clock_breakdown": False,
    "hybrid_engine": {
        "enabled": True,
        "max_out_tokens": 1024,
        "inference_tp_size": 2,
        "release_inference_cache": True,
        "pin_parameters": False,
        "tp_gather_partition_size": 4,
    },
    "tensorboard": {
        "enabled": False,
        "output_path": "tb/ds_tensorboard_logs/",
        "job_name": "actor_tensorboard",
    },
}

TRAIN_CASES = [
    pytest.param(
        dict(
            offload=False,
            dtype="fp16",
            stage=0,
            enable_tensorboard=False,
            tb_path="step1_tensorboard",
            tb_name="step1_model",
        ),
        STEP1_DEFAULT,
        id="step1-defaults",
    ),
    pytest.param(
        dict(
            offload=True,
            dtype="bf16",
            stage=3,
            enable_tensorboard=True,
            tb_path="/out",
            tb_name="step1_model",
        ),
        BF16_Z3_OFFLOAD_TB,
        id="bf16-z3-offload-tb",
    ),
    pytest.param(dict(offload=False, dtype="fp32"), FP32_Z2, id="fp32-builder-defaults"),
    pytest.param(
        dict(
            offload=False,
            dtype="fp16",
            stage=3,
            enable_hybrid_engine=True,
            inference_tp_size=2,
            release_inference_cache=True,
            pin_parameters=False,
            tp_gather_partition_size=4,
            max_out_tokens=1024,
            enable_mixed_precision_lora=True,
            tb_path="tb",
            tb_name="actor",
            world_size=16,
            devices_per_node=8,
        ),
        HYBRID_MIXED_LORA,
        id="hybrid-mixed-lora-multinode",
    ),
]


@pytest.mark.parametrize("kwargs, expected", TRAIN_CASES)
def test_train_config_matches_upstream_table(kwargs, expected):
    assert same(get_train_ds_config(**kwargs), expected)


def test_mixed_precision_lora_on_one_node_has_no_hpz():
    zero = get_train_ds_config(
        False, "bf16", 3, enable_mixed_precision_lora=True, world_size=8, devices_per_node=8
    )["zero_optimization"]
    assert zero["zero_quantized_nontrainable_weights"] is True
    assert "zero_hpz_partition_size" not in zero


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "dtype, precision",
    [
        ("fp16", {"fp16": {"enabled": True, "loss_scale_window": 100}}),
        ("bf16", {"bfloat16": {"enabled": True}}),
        ("fp32", {}),
    ],
)
@pytest.mark.parametrize("offload, device", [(False, "none"), (True, "cpu")])
def test_train_config_every_stage_dtype_offload(stage, dtype, precision, offload, device):
    config = get_train_ds_config(offload, dtype, stage)
    assert same(
        config["zero_optimization"],
        {
            "stage": stage,
            "overlap_comm": True,
            "offload_param": {"device": device},
            "offload_optimizer": {"device": device},
            "stage3_param_persistence_threshold": 10000.0,
            "stage3_max_live_parameters": 30000000.0,
            "stage3_prefetch_bucket_size": 30000000.0,
            "memory_efficient_linear": False,
        },
    )
    assert {k: config[k] for k in ("fp16", "bfloat16", "bf16") if k in config} == precision
    assert list(config) == [
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "steps_per_print",
        "zero_optimization",
        *precision,
        "gradient_clipping",
        "prescale_gradients",
        "wall_clock_breakdown",
        "hybrid_engine",
        "tensorboard",
    ]


@pytest.mark.parametrize(
    "dtype, precision",
    [
        ("fp16", {"fp16": {"enabled": True}}),
        ("bf16", {"bfloat16": {"enabled": True}}),
        ("fp32", {}),
    ],
)
def test_eval_config_matches_upstream_table(dtype, precision):
    expected = {
        "train_batch_size": 32,
        "train_micro_batch_size_per_gpu": 4,
        "steps_per_print": 10,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 10000.0,
            "offload_param": {"device": "cpu"},
            "memory_efficient_linear": False,
        },
        **precision,
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }
    assert same(get_eval_ds_config(True, dtype, 3), expected)
    assert get_eval_ds_config(False, dtype)["zero_optimization"]["stage"] == 0
    assert get_eval_ds_config(False, dtype)["zero_optimization"]["offload_param"] == {"device": "none"}


def test_builders_reject_unknown_dtype_and_stage():
    with pytest.raises(DschatError, match=r"'fp8'.*fp16, bf16, fp32"):
        get_train_ds_config(False, "fp8")
    with pytest.raises(DschatError, match="'float16'"):
        get_eval_ds_config(False, "float16")
    with pytest.raises(DschatError, match="--zero_stage 4"):
        get_train_ds_config(False, "bf16", stage=4)


def test_constants_and_fresh_dicts():
    assert (ds_utils.GLOBAL_BATCH_SIZE, ds_utils.MICRO_BATCH_SIZE) == (32, 4)
    first = get_train_ds_config(False, "bf16")
    first["zero_optimization"]["offload_param"]["device"] = "nvme"
    assert get_train_ds_config(False, "bf16")["zero_optimization"]["offload_param"] == {"device": "none"}


def test_set_batch_sizes():
    base = get_train_ds_config(False, "bf16")
    config = set_batch_sizes(
        base, per_device_train_batch_size=8, world_size=16, gradient_accumulation_steps=3
    )
    assert config["train_micro_batch_size_per_gpu"] == 8
    assert config["train_batch_size"] == 8 * 16 * 3
    assert (base["train_batch_size"], base["train_micro_batch_size_per_gpu"]) == (32, 4)  # input untouched
    assert list(config) == list(base)
    with pytest.raises(DschatError, match="--gradient_accumulation_steps = 0"):
        set_batch_sizes(base, 8, 1, 0)


def test_deep_merge_nested_and_non_mutating():
    base = {"a": 1, "zero": {"stage": 2, "offload": {"device": "none", "pin": True}}, "list": [1, 2]}
    override = {"zero": {"offload": {"device": "cpu"}, "new": 5}, "list": [3], "b": {"x": 1}}
    merged = deep_merge(base, override)
    assert merged == {
        "a": 1,
        "zero": {"stage": 2, "offload": {"device": "cpu", "pin": True}, "new": 5},
        "list": [3],
        "b": {"x": 1},
    }
    assert base == {"a": 1, "zero": {"stage": 2, "offload": {"device": "none", "pin": True}}, "list": [1, 2]}
    assert override == {"zero": {"offload": {"device": "cpu"}, "new": 5}, "list": [3], "b": {"x": 1}}
    merged["b"]["x"] = 2
    merged["zero"]["offload"]["pin"] = False
    assert override["b"] == {"x": 1} and base["zero"]["offload"]["pin"] is True
    # A dict replaces a scalar and a scalar replaces a dict.
    assert deep_merge({"fp16": True, "x": {"y": 1}}, {"fp16": {"enabled": False}, "x": 0}) == {
        "fp16": {"enabled": False},
        "x": 0,
    }


def test_load_config_override(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"zero_optimization": {"overlap_comm": false}, "steps_per_print": 1}\n')
    assert load_config_override(good) == {"zero_optimization": {"overlap_comm": False}, "steps_per_print": 1}


@pytest.mark.parametrize(
    "text, message",
    [
        ('{\n  "steps_per_print": 1,\n  "fp16": {enabled: true}\n}', r"bad\.json:3:\d+: invalid JSON"),
        ("[1, 2]", r"bad\.json: top level is a JSON list, expected an object"),
        ('{"a": 1, "a": 2}', r"bad\.json: duplicate key 'a'"),
        ("", r"bad\.json:1:1: invalid JSON"),
    ],
)
def test_load_config_override_errors(tmp_path, text, message):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(DschatError, match=message):
        load_config_override(bad)


def test_load_config_override_missing_file(tmp_path):
    with pytest.raises(DschatError, match=r"--ds_config_override: cannot read .*missing\.json"):
        load_config_override(tmp_path / "missing.json")


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_accepts_train_config(dist_env, stage, dtype, offload):
    from deepspeed.runtime.config import DeepSpeedConfig

    built = get_train_ds_config(
        offload, dtype, stage, enable_tensorboard=True, tb_path="tb", tb_name="step1_model"
    )
    config = DeepSpeedConfig(set_batch_sizes(built, 2, 1, 4))
    assert config.zero_optimization_stage == stage
    assert (config.train_batch_size, config.train_micro_batch_size_per_gpu) == (8, 2)
    assert config.gradient_accumulation_steps == 4
    assert config.gradient_clipping == 1.0
    assert (config.float16_config.enabled, config.bfloat16_config.enabled) == (
        dtype == "fp16",
        dtype == "bf16",
    )
    if dtype == "fp16":
        assert config.float16_config.loss_scale_window == 100  # upstream's 100, not DeepSpeed's default 1000
    device = "cpu" if offload else "none"
    assert config.zero_config.offload_optimizer.device == device
    assert config.zero_config.offload_param.device == device
    assert config.monitor_config.tensorboard.enabled is True
    assert config.monitor_config.tensorboard.job_name == "step1_model_tensorboard"


@pytest.mark.parametrize("stage", [0, 3])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_deepspeed_accepts_eval_config(dist_env, stage, dtype):
    from deepspeed.runtime.config import DeepSpeedConfig

    config = DeepSpeedConfig(get_eval_ds_config(True, dtype, stage))
    assert config.zero_optimization_stage == stage
    assert config.bfloat16_config.enabled == (dtype == "bf16")
    assert config.zero_config.offload_param.device == "cpu"
