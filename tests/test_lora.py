"""LoRA: which layers convert, the maths of the update, fuse == unfused, freezing, checkpointing, ZeRO-3."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from dschat.config import LoraConfig
from dschat.errors import DschatError
from dschat.utils.module.lora import (
    LinearLayer_LoRA,
    apply_lora,
    convert_linear_layer_to_lora,
    convert_lora_to_linear_layer,
    lora_modules,
    lora_state_dict,
    make_model_gradient_checkpointing_compatible,
    only_optimize_lora_parameters,
)

BATCH = torch.tensor([[2, 10, 55, 31, 7, 90, 120, 3], [2, 44, 44, 12, 250, 1, 60, 8]])
SCOPES = {"opt": "decoder.layers.", "llama": "layers."}
# Qualified names in named_modules() order (the order upstream converts, and draws, in).
EXPECTED_NAMES = {
    "opt": [
        f"model.decoder.layers.{i}.{leaf}"
        for i in range(2)
        for leaf in (
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.q_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
        )
    ],
    "llama": [
        f"model.layers.{i}.{leaf}"
        for i in range(2)
        for leaf in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ],
}


def load(tiny_models, arch: str) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()


def logits_of(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=BATCH, attention_mask=torch.ones_like(BATCH)).logits.float()


def randomise_left(model: nn.Module, std: float = 0.5) -> None:
    """Give every up-projection a non-zero value, so the LoRA update changes the output."""
    with torch.no_grad():
        for module in lora_modules(model):
            module.lora_left_weight.normal_(0.0, std)


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_converts_exactly_the_scoped_linears_and_keeps_base_parameters(tiny_models, arch):
    model = load(tiny_models, arch)
    before = dict(model.named_parameters())
    keys_before = set(model.state_dict())
    names = convert_linear_layer_to_lora(model, SCOPES[arch], lora_dim=4)

    assert names == EXPECTED_NAMES[arch]
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    for name in names:
        layer = model.get_submodule(name)
        assert isinstance(layer, LinearLayer_LoRA)
        # The very same Parameter objects, so optimizers, ties and checkpoints see the base weights unchanged.
        assert layer.weight is before[f"{name}.weight"]
        assert layer.bias is before.get(f"{name}.bias")
        out_features, in_features = layer.weight.shape
        assert layer.lora_right_weight.shape == (in_features, 4)
        assert layer.lora_left_weight.shape == (4, out_features)
        assert torch.equal(layer.lora_left_weight, torch.zeros(4, out_features))
        assert layer.lora_scaling == 1 / 4  # alpha 1 by default, as upstream
        # Upstream freezes the base weight of each converted layer; biases stay trainable.
        assert not layer.weight.requires_grad
        assert layer.bias is None or layer.bias.requires_grad
    lora_keys = {f"{n}.{p}" for n in names for p in ("lora_right_weight", "lora_left_weight")}
    assert set(model.state_dict()) == keys_before | lora_keys
    assert set(lora_state_dict(model)) == lora_keys


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_wrapped_model_starts_as_the_original_function(tiny_models, arch):
    model = load(tiny_models, arch)
    expected = logits_of(model)
    convert_linear_layer_to_lora(model, SCOPES[arch], lora_dim=4)
    assert torch.equal(logits_of(model), expected)  # left matrices are zero: the update adds exact zeros


def test_layer_forward_is_linear_plus_scaled_low_rank_update():
    linear = nn.Linear(6, 5)
    layer = LinearLayer_LoRA(linear.weight, lora_dim=2, lora_scaling=4.0, bias=linear.bias)
    with torch.no_grad():
        layer.lora_left_weight.normal_()
    x = torch.randn(3, 6)
    right, left = layer.lora_right_weight.detach(), layer.lora_left_weight.detach()
    expected = x @ linear.weight.detach().T + linear.bias.detach() + (x @ right @ left) * (4.0 / 2)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    assert "lora_dim=2" in repr(layer) and "lora_scaling=2" in repr(layer)


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_fused_equals_unfused_and_unfuse_restores_the_weights(tiny_models, arch):
    model = load(tiny_models, arch)
    original = logits_of(model)
    names = convert_linear_layer_to_lora(model, SCOPES[arch], lora_dim=4, lora_scaling=2.0)
    randomise_left(model)
    unfused = logits_of(model)
    assert (unfused - original).abs().max() > 1e-3
    layers = [model.get_submodule(name) for name in names]
    base = [layer.weight.detach().clone() for layer in layers]

    convert_lora_to_linear_layer(model)
    torch.testing.assert_close(logits_of(model), unfused, rtol=0, atol=1e-5)
    for layer, weight in zip(layers, base, strict=True):
        assert layer.fused
        delta = (2.0 / 4) * layer.lora_left_weight.detach().T @ layer.lora_right_weight.detach().T
        torch.testing.assert_close(layer.weight.detach(), weight + delta, rtol=0, atol=1e-6)
    convert_lora_to_linear_layer(model)  # fusing twice must not add the update twice
    torch.testing.assert_close(logits_of(model), unfused, rtol=0, atol=1e-5)

    for layer, weight in zip(layers, base, strict=True):
        layer.unfuse_lora_weight()
        assert not layer.fused
        torch.testing.assert_close(layer.weight.detach(), weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits_of(model), unfused, rtol=0, atol=1e-5)


def test_fuse_gathers_each_layers_parameters_through_the_given_factory(tiny_models):
    model = load(tiny_models, "llama")  # Llama linears have no bias: it must not be passed to the gather
    names = convert_linear_layer_to_lora(model, "self_attn.q_proj", lora_dim=2)
    owner = {id(layer.weight): layer for layer in lora_modules(model)}
    calls: list[list[nn.Parameter]] = []

    class Recorder:
        def __init__(self, params):
            calls.append(params)

        def __enter__(self):
            assert not owner[id(calls[-1][0])].fused  # the fuse happens inside the gather

        def __exit__(self, *exc):
            return False

    convert_lora_to_linear_layer(model, gather=Recorder)
    assert len(calls) == len(names) == 2
    for params, name in zip(calls, names, strict=True):
        layer = model.get_submodule(name)
        assert params == [layer.weight, layer.lora_left_weight, layer.lora_right_weight]
        assert layer.fused


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_only_optimize_lora_trains_only_the_lora_matrices(tiny_models, arch):
    model = load(tiny_models, arch)
    args = LoraConfig(lora_dim=4, lora_module_name=SCOPES[arch], only_optimize_lora=True)
    names = apply_lora(model, args)
    assert names == EXPECTED_NAMES[arch]
    lora_names = {f"{n}.{p}" for n in names for p in ("lora_right_weight", "lora_left_weight")}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora_names

    randomise_left(model, std=0.1)  # with L = 0 the right matrices would get no gradient in the first step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(input_ids=BATCH, labels=BATCH).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == lora_names


def test_without_only_optimize_lora_base_weights_of_converted_layers_are_still_frozen(tiny_models):
    model = load(tiny_models, "opt")
    apply_lora(model, LoraConfig(lora_dim=2, lora_module_name="decoder.layers.", only_optimize_lora=False))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"{n}.weight" for n in EXPECTED_NAMES["opt"]}


def test_force_optimize_params_keeps_listed_parameters_trainable(tiny_models):
    model = load(tiny_models, "opt")
    convert_linear_layer_to_lora(model, "fc1", lora_dim=2)
    only_optimize_lora_parameters(model, force_optimize_params=["model.decoder.final_layer_norm.weight"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert (
        "model.decoder.final_layer_norm.weight" in trainable
        and "model.decoder.layers.0.fc1.bias" not in trainable
    )
    assert len(trainable) == 1 + 2 * 2


def test_apply_lora_with_rank_zero_touches_nothing(tiny_models):
    model = load(tiny_models, "opt")
    keys = set(model.state_dict())
    assert (
        apply_lora(model, LoraConfig(lora_dim=0, lora_module_name="nothing", only_optimize_lora=False)) == []
    )
    assert set(model.state_dict()) == keys
    assert all(p.requires_grad for p in model.parameters())


def test_apply_lora_uses_alpha_and_dropout(tiny_models):
    model = load(tiny_models, "opt")
    args = LoraConfig(
        lora_dim=8, lora_module_name="fc2", only_optimize_lora=False, lora_alpha=16.0, lora_dropout=0.1
    )
    apply_lora(model, args)
    layer = model.get_submodule("model.decoder.layers.0.fc2")
    assert layer.lora_scaling == 2.0
    assert isinstance(layer.lora_dropout, nn.Dropout) and layer.lora_dropout.p == 0.1


def test_lora_dropout_follows_train_and_eval_mode():
    linear = nn.Linear(16, 16)
    layer = LinearLayer_LoRA(linear.weight, lora_dim=4, lora_dropout=0.5, bias=linear.bias)
    with torch.no_grad():
        layer.lora_left_weight.normal_()
    x = torch.randn(4, 16)
    assert layer.train() is layer and layer.training and layer.lora_dropout.training
    torch.manual_seed(1)
    noisy = layer(x)
    assert not torch.allclose(noisy, layer(x))  # a fresh dropout mask each call
    assert layer.eval() is layer and not layer.training and not layer.lora_dropout.training
    plain = linear(x) + (x @ layer.lora_right_weight @ layer.lora_left_weight) / 4
    torch.testing.assert_close(layer(x), plain, rtol=0, atol=1e-6)
    identity = LinearLayer_LoRA(nn.Linear(2, 2).weight, lora_dim=1)
    assert isinstance(identity.lora_dropout, nn.Identity)  # p = 0: no dropout module, as upstream


def backward_under_checkpointing(model: nn.Module) -> None:
    model.train()
    model(input_ids=BATCH, labels=BATCH).loss.backward()


def test_gradient_checkpointing_with_only_optimize_lora_reaches_the_lora_params(tiny_models):
    model = load(tiny_models, "opt")
    apply_lora(model, LoraConfig(lora_dim=4, lora_module_name="decoder.layers.", only_optimize_lora=True))
    randomise_left(model, std=0.1)
    model.gradient_checkpointing_enable()
    backward_under_checkpointing(model)
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert len(grads) == 24 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_input_require_grads_is_what_makes_reentrant_checkpointing_work(tiny_models):
    """The upstream bug (DSE #386): frozen embeddings + reentrant checkpointing cut the graph."""
    model = load(tiny_models, "llama")
    convert_linear_layer_to_lora(model, "layers.", lora_dim=4)
    only_optimize_lora_parameters(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.disable_input_require_grads()  # transformers 5 adds the hook itself; take it away to see the failure
    with pytest.raises(RuntimeError, match="does not require grad"):
        backward_under_checkpointing(model)
    make_model_gradient_checkpointing_compatible(model)
    backward_under_checkpointing(model)
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_right_weight" in n)


def test_gradient_checkpointing_helper_falls_back_to_an_embedding_hook():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4).requires_grad_(False)

        def get_input_embeddings(self):
            return self.embed

    model = Tiny()
    assert not model.embed(torch.tensor([1])).requires_grad
    assert make_model_gradient_checkpointing_compatible(model) is model
    assert model.embed(torch.tensor([1])).requires_grad


def test_comma_separated_scopes_match_any_substring(tiny_models):
    model = load(tiny_models, "llama")
    names = convert_linear_layer_to_lora(model, "q_proj, v_proj", lora_dim=2)
    assert names == [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in ("q", "v")]


def test_scope_that_matches_nothing_lists_the_linear_layers(tiny_models):
    model = load(tiny_models, "llama")
    with pytest.raises(DschatError) as err:
        convert_linear_layer_to_lora(model, "decoder.layers.", lora_dim=8)  # OPT's default on a Llama model
    message = str(err.value)
    assert (
        "'decoder.layers.'" in message and "LlamaForCausalLM" in message and "--lora_module_name" in message
    )
    assert "model.layers.0.self_attn.q_proj" in message and "'layers.'" in message
    assert "model.layers.1.mlp.down_proj" not in message  # only a sample of 10 ...
    assert "(15 in all)" in message  # ... of the 14 projections plus lm_head
    assert not lora_modules(model)


def test_rank_must_be_positive():
    with pytest.raises(ValueError, match="lora_dim > 0"):
        LinearLayer_LoRA(nn.Linear(2, 2).weight, lora_dim=0)
    with pytest.raises(ValueError, match="lora_dim > 0"):
        convert_linear_layer_to_lora(nn.Sequential(nn.Linear(2, 2)), "0", lora_dim=-1)


def test_seeded_right_matrices_are_upstreams_draws_in_module_order(tiny_models):
    model = load(tiny_models, "opt")
    torch.manual_seed(0)
    names = convert_linear_layer_to_lora(model, "decoder.layers.", lora_dim=8)

    torch.manual_seed(0)
    for name in names[:6]:  # k, v, q, out_proj [32 in], fc1 [32 in], fc2 [64 in] of layer 0, in that order
        layer = model.get_submodule(name)
        expected = torch.empty(layer.weight.shape[1], 8)
        nn.init.kaiming_uniform_(expected, a=math.sqrt(5))
        assert torch.equal(layer.lora_right_weight.detach(), expected)
    # Kaiming-uniform with a = sqrt(5) on an [in, r] tensor: fan_in = r, bound = sqrt(6 / (6 r)) = 1 / sqrt(r).
    right = model.get_submodule(names[0]).lora_right_weight.detach()
    assert 0.9 / math.sqrt(8) < right.abs().max() <= 1 / math.sqrt(8)


def test_zero3_convert_train_and_fuse(tiny_models, dist_env):
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # Threshold 0: without it ZeRO-3 keeps these tiny parameters whole ("persistent") and a missing gather would pass.
    zero = {"stage": 3, "stage3_param_persistence_threshold": 0}
    config = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": zero}
    hf_ds_config = HfDeepSpeedConfig(config)  # weakly referenced by HF: ZeRO-3 loading while it lives
    model = AutoModelForCausalLM.from_pretrained(tiny_models["opt"])
    del hf_ds_config
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters())

    torch.manual_seed(0)
    names = apply_lora(
        model, LoraConfig(lora_dim=4, lora_module_name="decoder.layers.", only_optimize_lora=True)
    )
    fc1 = model.get_submodule("model.decoder.layers.0.fc1")
    # Shapes come from ds_shape: the local weight is an empty partition.
    assert (fc1.in_features, fc1.out_features) == (32, 64) and fc1.lora_right_weight.shape == (32, 4)
    torch.manual_seed(0)
    first_right = nn.init.kaiming_uniform_(torch.empty(32, 4), a=math.sqrt(5))
    assert torch.equal(model.get_submodule(names[0]).lora_right_weight.detach(), first_right)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.train()
    engine.backward(engine(input_ids=BATCH[:1], labels=BATCH[:1]).loss)
    engine.step()
    engine.eval()
    unfused = logits_of(engine)
    lora_params = [fc1.weight, fc1.lora_left_weight, fc1.lora_right_weight]
    with deepspeed.zero.GatheredParameters(lora_params):
        assert fc1.lora_left_weight.abs().max() > 1e-3  # the step moved L away from zero
        delta = (1 / 4) * fc1.lora_left_weight.detach().T @ fc1.lora_right_weight.detach().T
        expected_weight = fc1.weight.detach() + delta
    # Partitioned (LoRA matrices included): a fuse without the gather would change nothing.
    assert all(p.numel() == 0 for p in lora_params)

    convert_lora_to_linear_layer(
        engine.module, gather=lambda params: deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    )
    assert all(layer.fused for layer in lora_modules(engine.module))
    assert fc1.weight.numel() == 0
    with deepspeed.zero.GatheredParameters(
        [fc1.weight]
    ):  # re-gathered from the partitions: the fuse was kept
        torch.testing.assert_close(fc1.weight.detach(), expected_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits_of(engine), unfused, rtol=0, atol=1e-5)
