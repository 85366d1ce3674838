"""--activation_memory lean: the SiLU-gated MLP and RMSNorm keep less for backward, with autograd's gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, OPTConfig, Qwen2Config

from dschat.utils.model.lean_activations import (
    lean_mlp_unsupported,
    lean_norm_unsupported,
    use_lean_activations,
)
from dschat.utils.module.lora import convert_linear_layer_to_lora

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4)
CONFIGS = {
    "llama": lambda: LlamaConfig(**SMALL, num_key_value_heads=2),
    "qwen2": lambda: Qwen2Config(**SMALL, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**SMALL, num_key_value_heads=2),
}
IDS = torch.randint(0, 96, (3, 11), generator=torch.Generator().manual_seed(1))


def model_pair(config, seed=0):
    models = []
    for _ in range(2):
        torch.manual_seed(seed)
        models.append(AutoModelForCausalLM.from_config(config).float())
    return models


def loss_and_grads(model):
    model.zero_grad()
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_loss_and_every_gradient_equal_autograds(arch):
    full, lean = model_pair(CONFIGS[arch]())
    assert use_lean_activations(lean) == 2 + 2 * 2 + 1  # per layer an MLP and two norms; the final norm
    full_loss, full_grads = loss_and_grads(full)
    lean_loss, lean_grads = loss_and_grads(lean)
    assert lean_loss == full_loss  # the forward is the same ops
    assert full_grads.keys() == lean_grads.keys()
    for name, grad in full_grads.items():
        assert torch.allclose(lean_grads[name], grad, rtol=1e-5, atol=1e-7), name


def saved_bytes(module, x) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (x saved by two layers counts once)."""
    kept = {}

    def pack(tensor):
        kept[(tensor.untyped_storage().data_ptr(), tensor.shape)] = tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum().backward()
    return sum(kept.values())


def test_it_keeps_half_the_intermediate_activations():
    full, lean = model_pair(LlamaConfig(**SMALL, num_key_value_heads=2))
    use_lean_activations(lean)
    x = torch.randn(4, 64, 32, requires_grad=True)
    before = saved_bytes(full.model.layers[0].mlp, x)
    after = saved_bytes(lean.model.layers[0].mlp, x)
    tokens, inter = 4 * 64, 80
    # activations: x + gate, silu, up, product -> x + gate, up (the weights are kept either way)
    assert before - after == tokens * 2 * inter * 4
    norm_before = saved_bytes(full.model.layers[0].input_layernorm, x)
    norm_after = saved_bytes(lean.model.layers[0].input_layernorm, x)
    assert norm_before - norm_after == tokens * 32 * 4  # the normalised output, recomputed in backward


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_norm_and_mlp_follow_autograd(dtype):
    full, lean = model_pair(LlamaConfig(**SMALL, num_key_value_heads=2))
    use_lean_activations(lean)
    x = torch.randn(2, 7, 32)
    for name in ("input_layernorm", "mlp"):
        outputs, grads = [], []
        for model in (full, lean):
            module = getattr(model.model.layers[0], name).to(dtype)
            inputs = x.to(dtype).requires_grad_()
            out = module(inputs)
            out.float().square().sum().backward()
            outputs.append(out)
            grads.append([inputs.grad, *(p.grad for p in module.parameters())])
        assert torch.equal(outputs[0], outputs[1]), name
        for a, b in zip(*grads):
            assert a.dtype == b.dtype and torch.allclose(a.float(), b.float(), rtol=2e-2, atol=2e-2), name


def test_lora_projections_and_other_activations_keep_their_own_forward():
    torch.manual_seed(0)
    lora = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL, num_key_value_heads=2)).float()
    use_lean_activations(lora)
    convert_linear_layer_to_lora(lora, "mlp", 4)
    mlp = lora.model.layers[0].mlp
    assert "LoRA" in lean_mlp_unsupported(mlp)
    for module in lora.modules():
        if hasattr(module, "lora_right_weight"):
            module.lora_left_weight.data.normal_()  # the adapter changes the output
    x = torch.randn(2, 5, 32)
    assert torch.allclose(mlp(x), type(mlp).forward(mlp, x))
    gelu = AutoModelForCausalLM.from_config(LlamaConfig(**SMALL, num_key_value_heads=2, hidden_act="gelu"))
    assert use_lean_activations(gelu) == 5  # the norms only
    assert "not SiLU" in lean_mlp_unsupported(gelu.model.layers[0].mlp)
    opt = AutoModelForCausalLM.from_config(
        OPTConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4)
    )
    assert use_lean_activations(opt) == 0  # no gated MLP, LayerNorms: nothing to do
    assert "not Llama's RMSNorm" in lean_norm_unsupported(torch.nn.LayerNorm(4))
