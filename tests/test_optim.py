"""Parameter groups, optimizer choice and LR schedule pinned to upstream's rules and closed-form maths."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from dschat.utils import optim
from dschat.utils.optim import (
    create_lr_scheduler,
    create_optimizer,
    get_optimizer_grouped_parameters,
    num_update_steps,
)

# Hand-written expectations per architecture: which trainable names upstream's substring rules keep out of
# weight decay. GPT-2's ln_1/ln_2 weights match none of the substrings, so upstream decays them.
NO_DECAY_RULES = {
    "opt": lambda n: n.endswith(".bias") or "layer_norm.weight" in n,
    "llama": lambda n: (
        n.endswith(("input_layernorm.weight", "post_attention_layernorm.weight")) or n == "model.norm.weight"
    ),
    "gpt2": lambda n: n.endswith(".bias") or n == "transformer.ln_f.weight",
}


def load(tiny_models, arch: str) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_models[arch])


def names_of(model: nn.Module, group: dict) -> list[str]:
    ids = {id(p) for p in group["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_groups_split_by_name_in_parameter_order(tiny_models, arch):
    model = load(tiny_models, arch)
    groups = get_optimizer_grouped_parameters(model, weight_decay=0.1)
    names = [n for n, _ in model.named_parameters()]
    expected_no_decay = [n for n in names if NO_DECAY_RULES[arch](n)]
    expected_decay = [n for n in names if not NO_DECAY_RULES[arch](n)]
    assert len(groups) == 2  # no LoRA parameters: the LoRA group is dropped
    assert [names_of(model, g) for g in groups] == [expected_decay, expected_no_decay]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all("lr" not in g for g in groups)
    # Parameter order inside each group follows named_parameters (matters for optimizer state layout).
    assert [id(p) for p in groups[0]["params"]] == [
        id(p) for n, p in model.named_parameters() if n in expected_decay
    ]


def test_gpt2_block_norms_are_decayed_like_upstream(tiny_models):
    model = load(tiny_models, "gpt2")
    decay, no_decay = get_optimizer_grouped_parameters(model, weight_decay=0.1)
    assert "transformer.h.0.ln_1.weight" in names_of(model, decay)
    assert "transformer.wte.weight" in names_of(model, decay)
    assert "transformer.ln_f.weight" in names_of(model, no_decay)


def add_fake_lora(layer: nn.Module, rank: int = 2) -> nn.Module:
    holder = nn.Module()
    holder.lora_right_weight = nn.Parameter(torch.zeros(layer.in_features, rank))
    holder.lora_left_weight = nn.Parameter(torch.zeros(rank, layer.out_features))
    layer.add_module("fake", holder)
    return holder


def test_lora_group_has_its_own_lr_and_frozen_params_are_excluded(tiny_models):
    model = load(tiny_models, "opt")
    q_proj = model.model.decoder.layers[0].self_attn.q_proj
    lora = add_fake_lora(q_proj)
    q_proj.weight.requires_grad_(False)
    decay, lora_group, no_decay = get_optimizer_grouped_parameters(model, weight_decay=0.05, lora_lr=3e-4)
    assert lora_group == {
        "params": [lora.lora_right_weight, lora.lora_left_weight],
        "weight_decay": 0.05,
        "lr": 3e-4,
    }
    assert "model.decoder.layers.0.self_attn.q_proj.weight" not in names_of(model, decay)
    assert "model.decoder.layers.0.self_attn.q_proj.bias" in names_of(model, no_decay)
    total = sum(len(g["params"]) for g in (decay, lora_group, no_decay))
    assert total == sum(p.requires_grad for p in model.parameters())


def test_only_lora_trainable_leaves_one_group(tiny_models):
    model = load(tiny_models, "opt")
    lora = add_fake_lora(model.model.decoder.layers[1].fc1)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    groups = get_optimizer_grouped_parameters(model, weight_decay=0.0)
    assert groups == [
        {"params": [lora.lora_right_weight, lora.lora_left_weight], "weight_decay": 0.0, "lr": 5e-4}
    ]


def test_the_optimizer_line_names_the_rates_that_train(tiny_models, caplog):
    model = load(tiny_models, "opt")
    with caplog.at_level(logging.INFO, logger="dschat"):
        optim.create_optimizer(get_optimizer_grouped_parameters(model, 0.0), 1e-3, offload=False)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("optimizer="))
    assert "lr=0.001 " in line and "lora" not in line  # no LoRA here (torch adds lr to every group it gets)
    lora = add_fake_lora(model.model.decoder.layers[1].fc1)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dschat"):
        optim.create_optimizer(get_optimizer_grouped_parameters(model, 0.0), 1e-3, offload=False)
    assert lora is not None and "lora_lr=0.0005 (only LoRA parameters train)" in caplog.text


def test_matching_is_on_the_lower_cased_name():
    model = nn.Module()
    model.dense = nn.Linear(2, 2)
    model.LayerNorm = nn.LayerNorm(2)  # BERT-style spelling: "LayerNorm.weight" -> "layernorm.weight"
    decay, no_decay = get_optimizer_grouped_parameters(model, weight_decay=0.1)
    assert decay["params"] == [model.dense.weight]
    assert no_decay["params"] == [model.dense.bias, model.LayerNorm.weight, model.LayerNorm.bias]


def test_cpu_optimizer_is_adamw_with_upstream_hyperparameters():
    model = nn.Linear(3, 2)
    groups = get_optimizer_grouped_parameters(model, weight_decay=0.1)
    optimizer = create_optimizer(groups, learning_rate=1e-3, offload=False)
    assert type(optimizer) is torch.optim.AdamW
    for group in optimizer.param_groups:
        assert group["betas"] == (0.9, 0.95)
        assert group["eps"] == 1e-8
        assert group["lr"] == 1e-3
        assert group["foreach"] is False


def reference_adamw(param, grads, lr, weight_decay, betas=(0.9, 0.95), eps=1e-8):
    """AdamW written out with plain floats: decoupled decay, bias-corrected moments."""
    p, m, v = list(param), [0.0] * len(param), [0.0] * len(param)
    for t, grad in enumerate(grads, start=1):
        for i, g in enumerate(grad):
            p[i] -= lr * weight_decay * p[i]
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat = m[i] / (1 - betas[0] ** t)
            v_hat = v[i] / (1 - betas[1] ** t)
            p[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


def test_adamw_steps_equal_hand_written_update():
    decayed = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    plain = nn.Parameter(torch.tensor([0.3, 4.0], dtype=torch.float64))
    groups = [
        {"params": [decayed], "weight_decay": 0.1},
        {"params": [plain], "weight_decay": 0.0, "lr": 0.05},
    ]
    optimizer = create_optimizer(groups, learning_rate=0.01, offload=False)
    grads_decayed = [[0.2, -1.0, 3.0], [0.1, 0.4, -2.0], [-0.5, 0.0, 1.0]]
    grads_plain = [[1.0, -0.25], [2.0, 0.5], [0.1, -0.1]]
    for g_d, g_p in zip(grads_decayed, grads_plain, strict=True):
        decayed.grad = torch.tensor(g_d, dtype=torch.float64)
        plain.grad = torch.tensor(g_p, dtype=torch.float64)
        optimizer.step()
    expected_decayed = reference_adamw([1.0, -2.0, 0.5], grads_decayed, lr=0.01, weight_decay=0.1)
    expected_plain = reference_adamw([0.3, 4.0], grads_plain, lr=0.05, weight_decay=0.0)
    assert decayed.tolist() == pytest.approx(expected_decayed, rel=1e-12, abs=1e-12)
    assert plain.tolist() == pytest.approx(expected_plain, rel=1e-12, abs=1e-12)


class Recorder:
    """Stands in for a DeepSpeed optimizer class that needs a compiled op or a GPU."""

    def __init__(self, params, **kwargs):
        self.params, self.kwargs = params, kwargs


def test_offload_uses_deepspeed_cpu_adam_in_adamw_mode(monkeypatch):
    monkeypatch.setattr(optim, "DeepSpeedCPUAdam", Recorder)
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]
    optimizer = create_optimizer(groups, learning_rate=2e-5, offload=True)
    assert isinstance(optimizer, Recorder)
    assert optimizer.params is groups
    assert optimizer.kwargs == {"lr": 2e-5, "betas": (0.9, 0.95), "eps": 1e-8, "adamw_mode": True}


def test_accelerator_uses_fused_adam_in_adamw_mode(monkeypatch):
    class FakeAccelerator:
        def device_name(self):
            return "cuda"

    monkeypatch.setattr(optim, "get_accelerator", FakeAccelerator)
    monkeypatch.setattr(optim, "FusedAdam", Recorder)
    groups = [{"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.0}]
    optimizer = create_optimizer(groups, learning_rate=1e-3, offload=False)
    assert isinstance(optimizer, Recorder)
    assert optimizer.kwargs == {"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "adam_w_mode": True}


def test_without_a_cuda_compiler_the_accelerator_gets_torchs_fused_adamw_with_the_same_update(
    monkeypatch, caplog
):
    class FakeAccelerator:
        def device_name(self):
            return "cuda"

    def no_nvcc(*args, **kwargs):
        raise RuntimeError("Error building extension 'fused_adam'\nnvcc: not found")

    monkeypatch.setattr(optim, "get_accelerator", FakeAccelerator)
    monkeypatch.setattr(optim, "FusedAdam", no_nvcc)
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(4)]
    fused = [nn.Parameter(w.clone()) for w in weights]
    plain = [nn.Parameter(w.clone()) for w in weights]
    with caplog.at_level(logging.WARNING, logger="dschat.utils.optim"):
        optimizer = create_optimizer(
            [{"params": fused, "weight_decay": 0.1}], learning_rate=1e-2, offload=False
        )
    assert "FusedAdam could not be built (nvcc: not found): using torch's fused AdamW" in caplog.text
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    reference = torch.optim.AdamW(
        [{"params": plain, "weight_decay": 0.1}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8
    )
    for _ in range(3):
        for params, opt in ((fused, optimizer), (plain, reference)):
            opt.zero_grad()
            sum((p * p).sum() for p in params).backward()
            opt.step()
    for a, b in zip(fused, plain):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("micro", "gas", "epochs", "expected"),
    [(10, 1, 1, 10), (10, 3, 2, 8), (9, 3, 1, 3), (1, 4, 3, 3), (460, 1, 16, 7360)],
)
def test_num_update_steps(micro, gas, epochs, expected):
    assert num_update_steps(micro, gas, epochs) == expected


def cosine_closed_form(base, step, warmup, total):
    if step < warmup:
        return base * step / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_cosine_schedule_with_warmup_matches_closed_form():
    params = [nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))]
    groups = [
        {"params": [params[0]], "weight_decay": 0.0},
        {"params": [params[1]], "weight_decay": 0.0, "lr": 5e-4},
    ]
    optimizer = create_optimizer(groups, learning_rate=1e-3, offload=False)
    scheduler = create_lr_scheduler(optimizer, "cosine", num_warmup_steps=3, num_training_steps=11)
    for step in range(12):
        lrs = [g["lr"] for g in optimizer.param_groups]
        assert lrs == pytest.approx(
            [cosine_closed_form(b, step, 3, 11) for b in (1e-3, 5e-4)], rel=1e-12, abs=0
        )
        optimizer.step()
        scheduler.step()
    # A few pinned points, independent of the helper above.
    assert cosine_closed_form(1e-3, 7, 3, 11) == pytest.approx(0.5e-3)
    assert cosine_closed_form(1e-3, 11, 3, 11) == pytest.approx(0.0)


def test_linear_schedule_decays_to_zero():
    optimizer = create_optimizer(
        [{"params": [nn.Parameter(torch.zeros(1))]}], learning_rate=1.0, offload=False
    )
    scheduler = create_lr_scheduler(optimizer, "linear", num_warmup_steps=0, num_training_steps=4)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
