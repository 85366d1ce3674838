"""Faster batching with the same maths: length grouping, packing, answer-only labels, padding choice."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dschat import config
from dschat.flags import parse_train_args
from dschat.utils.data import data_utils, prompts
from dschat.utils.data.batching import (
    FlatCollator,
    LengthGroupedSampler,
    PackedCollator,
    PackedDataset,
    balanced_rows,
    pack_rows,
    pack_windows,
)
from dschat.utils.data.collate import IGNORE_INDEX, REAL_TOKENS, SFTCollator
from dschat.utils.data.tokenized import PromptDataset, TokenizedSamples
from dschat.utils.loaders import resolve_padding


def random_samples(lengths, seed=0, vocab=300):
    rng = np.random.RandomState(seed)
    ids = [rng.randint(3, vocab, size=n).tolist() for n in lengths]
    masks = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return PromptDataset(TokenizedSamples.from_lists(ids, masks))


# --- length grouping --------------------------------------------------------------------------------


def test_length_grouped_sampler_covers_everything_and_groups_lengths():
    lengths = np.random.RandomState(1).randint(5, 500, size=203)
    world, batch = 2, 4
    streams = [list(LengthGroupedSampler(lengths, batch, world, rank, seed=7)) for rank in range(world)]
    assert all(len(s) == 26 * batch for s in streams)  # ceil(203 / 8) = 26 global batches
    seen = set(streams[0]) | set(streams[1])
    assert seen == set(range(203))
    global_batches = [
        streams[0][i : i + batch] + streams[1][i : i + batch] for i in range(0, len(streams[0]), batch)
    ]
    grouped_pad = np.mean([max(lengths[g]) * len(g) - lengths[g].sum() for g in global_batches])
    rng = np.random.RandomState(0)
    random_batches = [rng.permutation(203)[:8] for _ in range(26)]
    random_pad = np.mean([max(lengths[g]) * len(g) - lengths[g].sum() for g in random_batches])
    assert grouped_pad < random_pad / 3
    assert streams[0] == list(LengthGroupedSampler(lengths, batch, world, 0, seed=7))  # seeded
    sampler = LengthGroupedSampler(lengths, batch, world, 0, seed=7)
    sampler.set_epoch(1)
    assert list(sampler) != streams[0]


# --- packing ----------------------------------------------------------------------------------------


def greedy_rows(lengths, max_seq_len):
    """Packing in data order (dschat's first packer): a new row whenever the next sample does not fit."""
    rows, used = [[]], 0
    for length in lengths:
        if used + length > max_seq_len:
            rows, used = [*rows, []], 0
        rows[-1].append(length)
        used += length
    return rows


def test_best_fit_decreasing_fills_rows_tightly_without_overflow():
    rows = pack_rows(np.array([5, 4, 3, 8, 1, 7]), max_seq_len=10)
    # 8 | 7 + 3 | 5 + 4 + 1: the 1 goes where it fits most tightly (room 1 beside 5 + 4, not room 2 beside 8)
    assert rows == [[3], [5, 2], [0, 1, 4]]
    assert len(greedy_rows([5, 4, 3, 8, 1, 7], 10)) == 4  # in data order it takes a row more


def test_packing_windows_cover_every_sample_once_are_seeded_and_fill_better_than_data_order():
    lengths = np.minimum(np.random.RandomState(3).lognormal(4.0, 0.9, size=3000).astype(int) + 2, 512)
    rows = pack_windows(lengths, 512, seed=5, window=1000)
    flat = [i for row in rows for i in row]
    assert sorted(flat) == list(range(3000))
    assert max(lengths[row].sum() for row in rows) <= 512
    order = np.random.RandomState(5).permutation(3000)
    window_of = {int(index): position // 1000 for position, index in enumerate(order)}
    assert all(len({window_of[i] for i in row}) == 1 for row in rows)  # a row never mixes windows
    assert rows == pack_windows(lengths, 512, seed=5, window=1000)
    assert rows != pack_windows(lengths, 512, seed=6, window=1000)
    fill = lengths.sum() / (len(rows) * 512)
    greedy_fill = lengths.sum() / (len(greedy_rows(lengths[order], 512)) * 512)
    assert fill > 0.97 > greedy_fill + 0.05, (fill, greedy_fill)
    # Rows come out in random order, not longest-first.
    first = [int(lengths[row].max()) for row in rows[:50]]
    assert first != sorted(first, reverse=True)


def per_sample_losses(logits, labels):
    """Summed next-token loss per labelled token position, keyed by (row, position)."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, reduction="none", ignore_index=IGNORE_INDEX
    )
    return loss


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_packed_rows_give_the_same_per_sample_losses_as_unpacked(tiny_models, arch, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], attn_implementation=attn).eval()
    dataset = random_samples([7, 12, 5, 9, 15, 3], seed=2, vocab=290)
    packed = PackedDataset(dataset, max_seq_len=24)
    assert len(packed) < len(dataset)
    batch = PackedCollator(pad_token_id=2)([packed[i] for i in range(len(packed))])
    assert int(batch.pop(REAL_TOKENS)) == sum(len(dataset[i]["input_ids"]) for i in range(len(dataset)))
    with torch.no_grad():
        packed_loss = per_sample_losses(model(**batch).logits, batch["labels"])
    packed_sums = []
    for r, row in enumerate(packed.rows):
        start = 0
        for index in row:
            n = len(dataset[index]["input_ids"])
            packed_sums.append(packed_loss[r, start : start + n - 1].sum().item())
            start += n
    unpacked = SFTCollator(2, 24, pad_to_max_len=False)([dataset[i] for i in range(len(dataset))])
    unpacked.pop(REAL_TOKENS)
    with torch.no_grad():
        loss = per_sample_losses(model(**unpacked).logits, unpacked["labels"])
    order = [i for row in packed.rows for i in row]
    assert packed_sums == pytest.approx([loss[i].sum().item() for i in order], rel=1e-4, abs=1e-4)
    # Token-mean over the whole batch is the same number in both layouts.
    targets_packed = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    targets_unpacked = (unpacked["labels"][:, 1:] != IGNORE_INDEX).sum()
    assert targets_packed == targets_unpacked
    assert packed_loss.sum() / targets_packed == pytest.approx(
        (loss.sum() / targets_unpacked).item(), rel=1e-4
    )


def test_packed_labels_skip_each_samples_first_token_and_can_be_answer_only():
    dataset = random_samples([4, 6], seed=3)
    packed = PackedDataset(dataset, 16)
    assert sorted(packed.rows) == [[0, 1]] or packed.rows == [[1, 0]]
    packed.rows = [[0, 1]]  # the layout below: sample 0, then sample 1
    row = packed[0]
    batch = PackedCollator(0, train_on_prompt=False)([row])
    labels = batch["labels"][0].tolist()
    ids = row["input_ids"].tolist()
    # sample 1: tokens 0-3, answer = last 2; sample 2: tokens 4-9, answer = last 3
    assert labels == [
        IGNORE_INDEX,
        IGNORE_INDEX,
        ids[2],
        ids[3],
        IGNORE_INDEX,
        IGNORE_INDEX,
        IGNORE_INDEX,
        ids[7],
        ids[8],
        ids[9],
    ]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    mask = batch["attention_mask"][0, 0] == 0
    assert mask[5, 4] and not mask[5, 3] and not mask[2, 3]  # causal within a sample, nothing across


# --- answer-only labels -----------------------------------------------------------------------------


def labelled_text(tokenizer, dataset, index=0):
    batch = SFTCollator(tokenizer.pad_token_id, 128, pad_to_max_len=False, train_on_prompt=False)(
        [dataset[index]]
    )
    labels = batch["labels"][0]
    return tokenizer.decode(labels[labels != IGNORE_INDEX])


def build(tmp_path, tokenizer, rows, template):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows * 10))
    train, _ = data_utils.create_prompt_dataset(
        0,
        [str(path)],
        "10,0,0",
        str(tmp_path / "cache"),
        1,
        1234,
        tokenizer,
        128,
        tokenizer.eos_token,
        prompt_template=template,
        train_on_prompt=False,
    )
    return train


def test_answer_only_labels_upstream_format_multi_turn(tmp_path, tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt"])
    tokenizer.pad_token = tokenizer.eos_token
    rows = [
        {
            "messages": [
                {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "what now?"},
                {"role": "assistant", "content": "we rest"},
            ]
        }
    ]
    train = build(tmp_path, tokenizer, rows, prompts.UPSTREAM)
    assert labelled_text(tokenizer, train) == " hello we rest</s>"


def test_answer_only_labels_chat_template_multi_turn(tmp_path, tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tokenizer.pad_token = tokenizer.eos_token
    rows = [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "see you"},
            ]
        }
    ]
    train = build(tmp_path, tokenizer, rows, prompts.CHAT_TEMPLATE)
    assert labelled_text(tokenizer, train) == "hello<|im_end|>\nsee you<|im_end|>\n"


# --- padding choice ---------------------------------------------------------------------------------


def padding(model, *flags: str) -> str:
    """The padding main.py would use for these flags (parsed and configured as main.py does)."""
    cfg = config.from_args(parse_train_args(["--model_name_or_path", "unused", *flags]))
    return resolve_padding(cfg.batch, cfg.lora, model)


def test_auto_padding_is_flat_for_known_models_dynamic_otherwise_upstream_on_request(tiny_models, caplog):
    opt = AutoModelForCausalLM.from_pretrained(tiny_models["opt"])  # OPT: dropout 0.1
    llama = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])  # Llama: no dropout
    with caplog.at_level(logging.INFO, logger="dschat"):
        assert padding(opt) == "free"
    assert "--pad_to_max_len reproduces a seeded upstream run" in caplog.text  # said where it matters
    assert padding(llama) == "free"
    assert padding(llama, "--lora_dim", "4", "--lora_dropout", "0.1") == "free"
    assert padding(opt, "--pad_to_max_len") == "max_length"
    assert padding(llama, "--padding", "max_length") == "max_length"
    assert padding(llama, "--padding", "longest") == "longest"
    llama.config.model_type = "some_remote_code_model"  # attention not known to take the block mask
    assert padding(llama) == "longest"


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_flat_micro_batches_give_padded_batches_loss(tiny_models, arch):
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()  # default attention: sdpa
    dataset = random_samples([30, 7, 12, 25, 5, 18], seed=4, vocab=290)
    items = [dataset[i] for i in range(len(dataset))]
    flat = FlatCollator(PackedCollator(pad_token_id=2), max_seq_len=32)(items)
    padded = SFTCollator(2, 32, pad_to_max_len=False)(items)
    flat.pop(REAL_TOKENS), padded.pop(REAL_TOKENS)
    with torch.no_grad():
        assert model(**flat).loss.item() == pytest.approx(model(**padded).loss.item(), rel=1e-5)


def test_balanced_rows_are_few_even_and_never_overflow():
    lengths = np.random.RandomState(2).randint(1, 200, size=40)
    rows = balanced_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(40))
    widths = [int(lengths[row].sum()) for row in rows]
    assert max(widths) <= 512 and len(rows) <= int(np.ceil(lengths.sum() / 512)) + 1
    assert max(widths) - min(widths) < lengths.max()  # even: no row is a nearly empty remainder
    assert balanced_rows(np.array([500, 480, 20]), 512) == [[0], [1, 2]]
    assert len(balanced_rows(np.array([500, 500, 20]), 512)) == 3  # 20 fits beside neither 500


def test_flat_micro_batches_hold_the_same_samples_in_rows_of_at_most_max_seq_len():
    dataset = random_samples([30, 7, 12, 25, 5, 18], seed=4)
    items = [dataset[i] for i in range(len(dataset))]
    batch = FlatCollator(PackedCollator(pad_token_id=0), max_seq_len=32)(items)
    padded = SFTCollator(0, 32, pad_to_max_len=False)(items)
    # 97 tokens in 4 rows (30 | 25 | 18 + 5 | 12 + 7): the batch is as wide as its longest sample
    assert tuple(batch["input_ids"].shape) == (4, 30)
    assert int(batch[REAL_TOKENS]) == int(padded[REAL_TOKENS]) == 97
    assert batch["input_ids"].numel() < padded["input_ids"].numel()
    # The same targets: every sample's tokens after its first, wherever its row put it.
    flat_targets = sorted(batch["labels"][:, 1:][batch["labels"][:, 1:] != IGNORE_INDEX].tolist())
    padded_targets = sorted(padded["labels"][:, 1:][padded["labels"][:, 1:] != IGNORE_INDEX].tolist())
    assert flat_targets == padded_targets
