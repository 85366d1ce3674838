"""Tokenizer pad rules, model creation (vocab x8, ids, dropout, ZeRO-3) and the fp32-loss wrapper (spec 4)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import is_deepspeed_zero3_enabled

from dschat.errors import DschatError
from dschat.utils.model.model_utils import create_hf_model, load_hf_tokenizer, model_config_only
from dschat.utils.model.patches import causal_lm_model_to_fp32_loss

ARCHS = ("opt", "llama", "gpt2")
TINY_VOCAB = 300  # tests/tiny.py trains 300-token vocabularies
ZERO3_CONFIG = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": {"stage": 3}}


def copy_model(source: Path, parent: Path, name: str) -> Path:
    """Copy a tiny model dir to parent/name (the dir name decides upstream's llama rule)."""
    target = parent / name
    shutil.copytree(source, target)
    return target


def build(tiny_models, arch: str, seed: int = 0, **kwargs):
    """Tokenizer and model of a tiny architecture, created under a fixed seed."""
    tokenizer = load_hf_tokenizer(str(tiny_models[arch]))
    torch.manual_seed(seed)
    return tokenizer, create_hf_model(AutoModelForCausalLM, str(tiny_models[arch]), tokenizer, **kwargs)


def sample_batch(vocab: int = TINY_VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of ids with -100 labels at the start of one and the end of the other (prompt / padding)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab, (2, 10), generator=generator)
    labels = input_ids.clone()
    labels[0, :4] = -100
    labels[1, 7:] = -100
    return input_ids, labels


# ---- tokenizer (spec 4.1) ----


def test_opt_pad_becomes_eos(tiny_models):
    raw = AutoTokenizer.from_pretrained(tiny_models["opt"])
    assert (raw.pad_token, raw.pad_token_id) == ("<pad>", 1)
    tokenizer = load_hf_tokenizer(str(tiny_models["opt"]))
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("</s>", 2)  # upstream overrides the real pad
    assert tokenizer.padding_side == "right"
    assert len(tokenizer) == TINY_VOCAB


def test_gpt2_pad_is_eos(tiny_models):
    tokenizer = load_hf_tokenizer(str(tiny_models["gpt2"]))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert len(tokenizer) == TINY_VOCAB
    assert tokenizer.padding_side == "right"


def test_llama_named_dir_adds_pad_token(tiny_models, tmp_path_factory):
    path = copy_model(tiny_models["llama"], tmp_path_factory.mktemp("models"), "my-llama-2-copy")
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    tokenizer = load_hf_tokenizer(str(path))
    assert tokenizer.pad_token == "[PAD]"
    assert tokenizer.pad_token_id == TINY_VOCAB  # the new last id
    assert len(tokenizer) == TINY_VOCAB + 1
    assert tokenizer.padding_side == "right"
    assert tokenizer.convert_tokens_to_ids("[PAD]") != tokenizer.eos_token_id


def test_llama_rule_is_a_substring_of_the_path(tiny_models, tmp_path_factory):
    parent = tmp_path_factory.mktemp("models")
    # A Llama-style tokenizer in a dir without "llama" in its name gets the generic rule (pad = eos) ...
    plain = load_hf_tokenizer(str(copy_model(tiny_models["llama"], parent, "plain-model")))
    assert (plain.pad_token, len(plain)) == ("</s>", TINY_VOCAB)
    # ... and an OPT tokenizer in a "llama" dir keeps its own pad token (the llama branch adds only if missing).
    opt = load_hf_tokenizer(str(copy_model(tiny_models["opt"], parent, "opt-in-llama-dir")))
    assert (opt.pad_token, opt.pad_token_id, len(opt)) == ("<pad>", 1, TINY_VOCAB)
    assert opt.padding_side == "right"  # upstream would leave the class default here; we always pad right


def test_padding_is_on_the_right(tiny_models):
    tokenizer = load_hf_tokenizer(str(tiny_models["gpt2"]))
    batch = tokenizer(["Paris", "The capital of France is Paris."], padding=True)
    short, long = batch["input_ids"]
    n = len(tokenizer("Paris")["input_ids"])
    assert n < len(long)
    assert short[n:] == [tokenizer.pad_token_id] * (len(long) - n)
    assert batch["attention_mask"][0] == [1] * n + [0] * (len(long) - n)


@pytest.mark.parametrize("tokens", ["<|endoftext|>", ["<|endoftext|>"]])
def test_add_special_tokens_makes_one_id(tiny_models, tokens):
    plain = load_hf_tokenizer(str(tiny_models["opt"]))
    assert (
        len(plain("<|endoftext|>", add_special_tokens=False)["input_ids"]) > 1
    )  # BPE pieces, as upstream #819
    tokenizer = load_hf_tokenizer(str(tiny_models["opt"]), add_special_tokens=tokens)
    ids = tokenizer("<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids == [TINY_VOCAB]
    assert len(tokenizer) == TINY_VOCAB + 1
    assert tokenizer.decode(tokenizer("a<|endoftext|>b")["input_ids"], skip_special_tokens=True) == "ab"


def test_tokenizer_missing_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DschatError, match="no-such-model.*does not exist"):
        load_hf_tokenizer(str(missing))


def test_tokenizer_dir_without_tokenizer_files(tiny_models, tmp_path):
    shutil.copy(tiny_models["opt"] / "config.json", tmp_path / "config.json")
    with pytest.raises(DschatError, match="no tokenizer files.*save_pretrained"):
        load_hf_tokenizer(str(tmp_path))


def test_offline_hub_id_is_a_dschat_error():
    # conftest sets HF_HUB_OFFLINE=1: a hub id that is not cached cannot load.
    with pytest.raises(DschatError, match="dschat-test-org/not-a-model.*download"):
        load_hf_tokenizer("dschat-test-org/not-a-model")
    with pytest.raises(DschatError, match="dschat-test-org/not-a-model"):
        model_config_only("dschat-test-org/not-a-model")


# ---- model creation (spec 4.2) ----


@pytest.mark.parametrize("arch", ARCHS)
def test_vocab_padded_to_multiple_of_8_and_ids(tiny_models, arch):
    tokenizer, model = build(tiny_models, arch)
    expected_rows = 8 * -(-len(tokenizer) // 8)
    assert expected_rows == 304  # 300 -> 304 (opt, gpt2) and 301 -> 304 (llama + [PAD])
    assert model.get_input_embeddings().weight.shape[0] == expected_rows
    assert model.get_output_embeddings().weight.shape[0] == expected_rows
    assert model.config.vocab_size == expected_rows
    assert model.config.end_token_id == tokenizer.eos_token_id
    # The MODEL's eos id, not the tokenizer's pad id (they differ for llama's [PAD]).
    assert model.config.pad_token_id == model.config.eos_token_id
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not is_deepspeed_zero3_enabled()


def test_llama_pad_id_differs_from_config_pad(tiny_models):
    tokenizer, model = build(tiny_models, "llama")
    assert tokenizer.pad_token_id == TINY_VOCAB
    assert model.config.pad_token_id == tokenizer.eos_token_id == 2


def test_checkpoint_rows_kept_and_resize_is_seeded(tiny_models):
    original = AutoModelForCausalLM.from_pretrained(tiny_models["opt"]).get_input_embeddings().weight
    _, first = build(tiny_models, "opt", seed=123)
    _, second = build(tiny_models, "opt", seed=123)
    _, other = build(tiny_models, "opt", seed=7)
    rows = first.get_input_embeddings().weight
    assert torch.equal(rows[:TINY_VOCAB], original)
    assert torch.equal(rows[TINY_VOCAB:], second.get_input_embeddings().weight[TINY_VOCAB:])
    assert not torch.equal(rows[TINY_VOCAB:], other.get_input_embeddings().weight[TINY_VOCAB:])


def test_dropout_override_sets_exactly_the_existing_keys(tiny_models, tmp_path, caplog):
    path = copy_model(tiny_models["opt"], tmp_path, "opt-with-activation-dropout")
    # Real OPT checkpoints carry activation_dropout in config.json; transformers 5's OPTConfig has no default.
    config_file = path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "activation_dropout": 0.0}))
    tokenizer = load_hf_tokenizer(str(path))
    with caplog.at_level(logging.INFO, logger="dschat"):
        model = create_hf_model(AutoModelForCausalLM, str(path), tokenizer, dropout=0.25)
    assert (model.config.dropout, model.config.attention_dropout, model.config.activation_dropout) == (
        0.25,
    ) * 3
    assert not hasattr(model.config, "hidden_dropout")
    assert "Setting model_config.activation_dropout to 0.25" in caplog.text
    assert model.model.decoder.layers[0].dropout == 0.25  # reached the modules, not just the config


def test_dropout_override_leaves_other_names(tiny_models):
    gpt2 = model_config_only(str(tiny_models["gpt2"]), dropout=0.0)
    assert (gpt2.resid_pdrop, gpt2.attn_pdrop, gpt2.embd_pdrop) == (0.1, 0.1, 0.1)
    llama = model_config_only(str(tiny_models["llama"]), dropout=0.3)
    assert llama.attention_dropout == 0.3
    opt = model_config_only(str(tiny_models["opt"]))
    assert (opt.dropout, opt.attention_dropout) == (0.1, 0.0)  # None: checkpoint values


def test_dtype_and_rlhf_from_config(tiny_models):
    _, bf16 = build(tiny_models, "opt", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    checkpoint = AutoModelForCausalLM.from_pretrained(tiny_models["opt"]).get_input_embeddings().weight
    # tiny.make_model initialised the checkpoint from seed 0: another seed gives other random weights.
    _, fresh = build(tiny_models, "opt", seed=1, rlhf_training=True)
    assert fresh.config.vocab_size == 304
    assert not torch.equal(fresh.get_input_embeddings().weight[:TINY_VOCAB], checkpoint)


def test_model_errors_are_dschat_errors(tiny_models, tmp_path):
    tokenizer = load_hf_tokenizer(str(tiny_models["opt"]))
    with pytest.raises(DschatError, match="does not exist"):
        create_hf_model(AutoModelForCausalLM, str(tmp_path / "missing"), tokenizer)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DschatError, match="no config.json"):
        create_hf_model(AutoModelForCausalLM, str(empty), tokenizer)
    bad_config = copy_model(tiny_models["opt"], tmp_path, "bad-config")
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(DschatError, match="config"):
        create_hf_model(AutoModelForCausalLM, str(bad_config), tokenizer)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_bad_weights_name_the_file(tiny_models, tmp_path, damage):
    path = copy_model(tiny_models["opt"], tmp_path, "damaged")
    weights = path / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"not a checkpoint" * 8)
    elif damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) - 64])
    else:
        weights.unlink()
    tokenizer = load_hf_tokenizer(str(path))
    expected = "model.safetensors" if damage != "missing" else "cannot load the model weights"
    with pytest.raises(DschatError, match=expected):
        create_hf_model(AutoModelForCausalLM, str(path), tokenizer)
    assert model_config_only(str(path)).model_type == "opt"  # config alone still loads (for --dry_run)


def test_truncated_bin_checkpoint_names_the_file(tiny_models, tmp_path):
    path = copy_model(tiny_models["opt"], tmp_path, "damaged-bin")
    state = AutoModelForCausalLM.from_pretrained(path).state_dict()
    (path / "model.safetensors").unlink()
    torch.save(state, path / "pytorch_model.bin")
    data = (path / "pytorch_model.bin").read_bytes()
    (path / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(DschatError, match="pytorch_model.bin"):
        create_hf_model(AutoModelForCausalLM, str(path), load_hf_tokenizer(str(path)))


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_zero3_construction_is_partitioned_and_trains(tiny_models, dist_env, arch):
    import deepspeed

    tokenizer, model = build(tiny_models, arch, seed=5, ds_config=ZERO3_CONFIG)
    assert not is_deepspeed_zero3_enabled()  # the HF config object lived only inside create_hf_model
    params = list(model.parameters())
    assert all(hasattr(p, "ds_id") and hasattr(p, "ds_numel") for p in params)
    embedding = model.get_input_embeddings().weight
    assert tuple(embedding.ds_shape) == (304, 32)
    assert model.config.vocab_size == 304

    _, plain = build(tiny_models, arch, seed=5)  # same seed without ZeRO: same weights, resized rows included
    with deepspeed.zero.GatheredParameters(params):
        for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
            assert torch.equal(p.detach(), q.detach()), name

    engine, *_ = deepspeed.initialize(model=model, config=ZERO3_CONFIG, model_parameters=params)
    input_ids, labels = sample_batch()
    with torch.no_grad():
        loss = engine(input_ids=input_ids, labels=labels).loss
        expected = plain(input_ids=input_ids, labels=labels).loss
    assert torch.allclose(loss, expected, atol=1e-6)


# ---- fp32 loss (spec 4.4) ----


@pytest.mark.parametrize("arch", ARCHS)
def test_fp32_loss_equals_builtin_loss(tiny_models, arch):
    _, model = build(tiny_models, arch)
    input_ids, labels = sample_batch()
    builtin = model(input_ids=input_ids, labels=labels)
    causal_lm_model_to_fp32_loss(model)
    wrapped = model(input_ids=input_ids, labels=labels, output_hidden_states=True)
    assert torch.allclose(wrapped.loss, builtin.loss, atol=1e-6, rtol=0)
    assert wrapped.to_tuple()[0] is wrapped.loss
    assert wrapped.hidden_states is not None  # extra kwargs pass through
    assert torch.equal(wrapped.logits, builtin.logits)
    wrapped.loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


def test_fp32_loss_matches_hand_computed_mean(tiny_models):
    _, model = build(tiny_models, "gpt2", dtype=torch.bfloat16)
    causal_lm_model_to_fp32_loss(model)
    input_ids, labels = sample_batch()
    output = model(input_ids=input_ids, labels=labels, attention_mask=torch.ones_like(input_ids))
    logits = output.logits.detach().float()
    total, count = 0.0, 0
    for row in range(2):
        for t in range(9):
            target = int(labels[row, t + 1])
            if target != -100:
                total -= float(F.log_softmax(logits[row, t], dim=-1)[target])
                count += 1
    assert count == 2 * 9 - 3 - 3  # 3 masked targets in each row after the shift
    assert output.loss.dtype == torch.float32
    assert abs(output.loss.item() - total / count) < 1e-5


def test_fp32_loss_tuple_output_and_no_labels(tiny_models):
    _, model = build(tiny_models, "opt")
    input_ids, labels = sample_batch()
    builtin = model(input_ids=input_ids, labels=labels).loss
    causal_lm_model_to_fp32_loss(model)
    causal_lm_model_to_fp32_loss(model)  # idempotent: no double wrapping
    as_tuple = model(input_ids=input_ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    assert torch.allclose(as_tuple[0], builtin, atol=1e-6)
    assert model(input_ids=input_ids).loss is None
