"""PEFT adapter export: peft.PeftModel on the base model computes what our unfused LoRA model computes."""

from __future__ import annotations

import contextlib
import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dschat.utils.module import peft_export
from dschat.utils.module.lora import (
    convert_linear_layer_to_lora,
    convert_lora_to_linear_layer,
    lora_modules,
    only_optimize_lora_parameters,
)
from dschat.utils.module.peft_export import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, save_peft_adapter

peft = pytest.importorskip("peft")

RANK, ALPHA = 4, 8.0  # scaling 2.0: a wrong alpha/r convention would show in the logits
IDS = torch.tensor([[1, 5, 9, 30, 2, 77, 120, 3]])


def load(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def lora_model(model_dir, scope="layers.", seed=0):
    """The tiny model with LoRA on ``scope`` and random (non-zero) left matrices, so the update is non-trivial."""
    model = load(model_dir)
    torch.manual_seed(seed)
    convert_linear_layer_to_lora(model, scope, RANK, lora_scaling=ALPHA, lora_dropout=0.1)
    with torch.no_grad():
        for module in lora_modules(model):
            module.lora_left_weight.normal_(std=0.5)
    only_optimize_lora_parameters(model)
    return model.eval()


def logits(model):
    with torch.no_grad():
        return model(IDS).logits


def test_peft_loads_the_adapter_and_reproduces_the_unfused_and_merged_model(tmp_path, tiny_models):
    model = lora_model(tiny_models["llama"])
    ours = logits(model)
    assert not torch.allclose(ours, logits(load(tiny_models["llama"])), atol=1e-3)  # the update matters

    adapter_dir = save_peft_adapter(model, tmp_path, str(tiny_models["llama"]), ALPHA, RANK, 0.1)

    assert adapter_dir == tmp_path / "lora_adapter"
    peft_model = peft.PeftModel.from_pretrained(load(tiny_models["llama"]), adapter_dir).eval()
    assert torch.allclose(logits(peft_model), ours, atol=1e-5)
    merged = peft_model.merge_and_unload()
    assert torch.allclose(logits(merged), ours, atol=1e-5)
    convert_lora_to_linear_layer(model)  # our own fuse agrees too
    assert torch.allclose(logits(model), ours, atol=1e-5)


def test_keys_shapes_and_config_follow_peft_conventions(tmp_path, tiny_models):
    model = lora_model(tiny_models["llama"], scope="self_attn.q_proj")
    save_peft_adapter(model, tmp_path, "org/base-model", ALPHA, RANK, 0.1)

    tensors = load_file(tmp_path / "lora_adapter" / ADAPTER_WEIGHTS_NAME)
    layer = model.model.layers[1].self_attn.q_proj
    a = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    assert a.shape == (RANK, layer.in_features) and b.shape == (layer.out_features, RANK)
    assert torch.equal(a, layer.lora_right_weight.detach().t()) and torch.equal(
        b, layer.lora_left_weight.detach().t()
    )
    assert len(tensors) == 2 * 2  # q_proj of two layers, A and B each

    config = json.loads((tmp_path / "lora_adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM" and config["bias"] == "none"
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA and config["lora_dropout"] == 0.1
    assert config["target_modules"] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert config["base_model_name_or_path"] == "org/base-model"
    assert peft.LoraConfig.from_pretrained(tmp_path / "lora_adapter").r == RANK


def test_a_second_export_replaces_the_first_and_leaves_no_temp_dirs(tmp_path, tiny_models):
    save_peft_adapter(lora_model(tiny_models["llama"], seed=1), tmp_path, "base", ALPHA, RANK, 0.0)
    model = lora_model(tiny_models["llama"], seed=2)
    save_peft_adapter(model, tmp_path, "base", ALPHA, RANK, 0.0)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora_adapter"]
    tensors = load_file(tmp_path / "lora_adapter" / ADAPTER_WEIGHTS_NAME)
    key = "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"
    assert torch.equal(tensors[key], model.model.layers[0].mlp.up_proj.lora_left_weight.detach().t())


def test_gather_factory_wraps_every_layer_and_only_rank0_writes(tmp_path, tiny_models, monkeypatch):
    model = lora_model(tiny_models["llama"])
    gathered = []

    def gather(params):
        gathered.append(params)
        return contextlib.nullcontext()

    monkeypatch.setattr(peft_export, "global_rank", lambda: 1)
    assert save_peft_adapter(model, tmp_path / "r1", "base", ALPHA, RANK, 0.0, gather=gather) is None
    assert not (tmp_path / "r1").exists()
    assert (
        len(gathered) == len(lora_modules(model)) == 2 * 7
    )  # q k v o gate up down, two layers: rank 1 gathers too
    assert all(p[0] is m.lora_right_weight for p, m in zip(gathered, lora_modules(model)))


def test_warns_when_non_lora_parameters_were_trained(tmp_path, tiny_models, caplog):
    model = lora_model(tiny_models["llama"])
    model.lm_head.weight.requires_grad = True
    save_peft_adapter(model, tmp_path, "base", ALPHA, RANK, 0.0)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == peft_export.__name__
    ]
    assert (
        len(warnings) == 1
        and "1 non-LoRA parameters were trained" in warnings[0]
        and "lm_head" in warnings[0]
    )


def test_refuses_fused_layers_wrong_hyperparameters_and_models_without_lora(tmp_path, tiny_models):
    model = lora_model(tiny_models["llama"])
    with pytest.raises(ValueError, match="lora_dim=4 scaling=2"):
        save_peft_adapter(model, tmp_path, "base", 1.0, RANK, 0.0)  # upstream's alpha 1 would be scaling 0.25
    convert_lora_to_linear_layer(model)
    with pytest.raises(RuntimeError, match="before fusing"):
        save_peft_adapter(model, tmp_path, "base", ALPHA, RANK, 0.0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_peft_adapter(load(tiny_models["llama"]), tmp_path, "base", ALPHA, RANK, 0.0)
    assert not (tmp_path / "lora_adapter").exists()


def test_zero3_engine_export_gathers_the_partitioned_matrices(tmp_path, tiny_models, dist_env):
    import deepspeed

    from dschat.utils.save import zero3_gather

    model = lora_model(tiny_models["llama"])
    expected = logits(model)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3},
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3, "torch_adam": True}},
    }
    engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=model.parameters())
    assert engine.module.model.layers[0].self_attn.q_proj.lora_left_weight.numel() == 0  # partitioned

    save_peft_adapter(engine, tmp_path, str(tiny_models["llama"]), ALPHA, RANK, 0.1, gather=zero3_gather)

    peft_model = peft.PeftModel.from_pretrained(load(tiny_models["llama"]), tmp_path / "lora_adapter").eval()
    assert torch.allclose(logits(peft_model), expected, atol=1e-5)
