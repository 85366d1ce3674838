"""--lm_loss chunked: the same loss and gradients as transformers' own, for every head layout in the tests."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig, PhiConfig

from dschat.utils.data.collate import IGNORE_INDEX
from dschat.utils.model import chunked_loss
from dschat.utils.model.chunked_loss import chunked_loss_unsupported, use_chunked_loss
from dschat.utils.module.lora import convert_linear_layer_to_lora

VOCAB = 96
CONFIGS = {
    "opt (tied)": lambda: OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4
    ),
    "opt (projection)": lambda: OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        word_embed_proj_dim=16,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
    ),
    "llama (untied)": lambda: LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    ),
    "gpt2 (tied)": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4),
    "phi (head bias)": lambda: PhiConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
    ),
}


def make_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = CONFIGS[name]()
    for key in ("dropout", "attention_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").train()


def make_batch() -> dict[str, torch.Tensor]:
    """Right-padded rows with a masked prompt: -100 at padding, prompt and (after the shift) row starts."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (3, 21), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 15:] = 0
    attention_mask[2, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    labels[0, :6] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def loss_and_grads(model, batch, **kwargs) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False, **kwargs).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(full, chunked):
    assert chunked[0] == pytest.approx(full[0], rel=1e-6)
    assert chunked[1].keys() == full[1].keys()
    for name, grad in full[1].items():
        torch.testing.assert_close(chunked[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture
def small_chunks(monkeypatch):
    """Seven rows per chunk, so every batch spans several chunks and a ragged last one."""
    monkeypatch.setattr(chunked_loss, "LOGITS_PER_CHUNK", 7 * VOCAB)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("num_items_in_batch", [None, 50])
def test_chunked_loss_equals_transformers_loss_and_gradients(name, num_items_in_batch, small_chunks):
    model, batch = make_model(name), make_batch()
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    full = loss_and_grads(model, batch, **kwargs)
    assert chunked_loss_unsupported(model) is None
    use_chunked_loss(model)
    assert_same(full, loss_and_grads(model, batch, **kwargs))


def test_chunked_loss_keeps_no_logits_and_runs_without_gradients(small_chunks):
    model, batch = make_model("llama (untied)"), make_batch()
    with torch.no_grad():
        expected = model(**batch).loss.item()
        use_chunked_loss(model)
        output = model(**batch)
        assert output.logits is None
        assert output.loss.item() == pytest.approx(expected, rel=1e-6)
        # Without labels (generation, perplexity) the model's own forward runs and returns logits.
        assert model(input_ids=batch["input_ids"]).logits.shape == (3, 21, VOCAB)


def test_a_lora_head_goes_through_its_own_module(small_chunks):
    model, batch = make_model("opt (projection)"), make_batch()
    assert convert_linear_layer_to_lora(model, "lm_head", lora_dim=4) == ["lm_head"]
    for name, param in model.named_parameters():
        if "lora_left" in name:
            torch.nn.init.normal_(param)  # upstream starts the adapter at zero: make it count
    full = loss_and_grads(model, batch)
    use_chunked_loss(model)
    assert_same(full, loss_and_grads(model, batch))


def test_heads_with_their_own_maths_keep_transformers_loss():
    from transformers import Gemma2Config

    config = Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
    )
    model = AutoModelForCausalLM.from_config(config)
    assert "gemma2" in chunked_loss_unsupported(model)  # its logits are soft-capped after the head
