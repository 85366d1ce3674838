"""Phase-1 data: upstream's split maths and tensors, blending, cache reuse and safety, the report, prepare_data."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from dschat import prepare_data
from dschat.errors import DschatError, run_cli
from dschat.utils.data import data_utils, prompts, splits
from dschat.utils.data.collate import SFTCollator
from dschat.utils.data.tokenized import TokenizedSamples


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def qa_rows(n, prefix="q"):
    return [
        {"prompt": f"{prefix} question number {i}?", "response": f"answer {i} " + "word " * (i % 7)}
        for i in range(n)
    ]


@pytest.fixture()
def tokenizer(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["opt"])
    tok.pad_token = tok.eos_token  # upstream's non-llama rule
    return tok


def build(tmp_path, tokenizer, data_path, **kw):
    options = dict(data_split="10,0,0", max_seq_len=64, seed=1234, sft_only_data_path=[])
    options.update(kw)
    return data_utils.create_prompt_dataset(
        0,
        data_path,
        options.pop("data_split"),
        str(tmp_path / "cache"),
        1,
        options.pop("seed"),
        tokenizer,
        options.pop("max_seq_len"),
        tokenizer.eos_token,
        **options,
    )


# --- split maths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "split,n,expected",
    [
        ("2,4,4", 10, [0, 2, 6, 10]),
        ("2,4,4", 9, [0, 1, 5, 9]),
        ("2,4,4", 11, [0, 3, 7, 11]),
        ("2,4,4", 76256, [0, 15252, 45754, 76256]),
        ("10,0,0", 7, [0, 7, 7, 7]),
        ("1,1", 5, [0, 3, 5]),
        ("9,1", 20, [0, 18, 20]),
    ],
)
def test_split_boundaries_match_upstream_arithmetic(split, n, expected):
    assert splits.split_boundaries(split, n) == expected


@pytest.mark.parametrize("seed", [1234, 7])
def test_split_indices_are_upstream_permutation_slices_and_cached_under_upstream_names(tmp_path, seed):
    out = str(tmp_path)
    phase1 = splits.split_indices(out, "Dahoas_rm_static", seed, "train", "2,4,4", 0, 11)
    permutation = np.arange(11, dtype=np.uint32)
    np.random.RandomState(seed).shuffle(permutation)
    assert phase1 == permutation[0:3].tolist()
    for i, (a, b) in enumerate([(0, 3), (3, 7), (7, 11)]):
        path = tmp_path / f"Dahoas_rm_static_seed{seed}_train_2,4,4_{i}.npy"
        assert np.load(path).tolist() == permutation[a:b].tolist()
    assert (
        splits.split_indices(out, "Dahoas_rm_static", seed, "train", "2,4,4", 2, 11)
        == permutation[7:].tolist()
    )


def test_stale_split_index_files_are_rebuilt_when_the_dataset_size_changes(tmp_path):
    out = str(tmp_path)
    splits.split_indices(out, "d", 1, "train", "10,0,0", 0, 5)
    grown = splits.split_indices(out, "d", 1, "train", "10,0,0", 0, 8)
    assert sorted(grown) == list(range(8))


@pytest.mark.parametrize("bad", ["2,4", "a,b,c", "2,4,4,1", "-1,2,2", "0,5,5", "0,0,0", ""])
def test_bad_data_split_is_a_clear_error(bad):
    with pytest.raises(DschatError, match="--data_split"):
        splits.parse_data_split(bad)


# --- tokenised samples equal upstream's tensors ------------------------------------------------------


def test_samples_equal_upstream_padded_tensors(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(30))
    train, evaluation = build(tmp_path, tokenizer, [path], max_seq_len=24)
    raw = data_utils.get_raw_dataset(path, str(tmp_path / "cache"), 1234, 0)
    index = splits.split_indices(
        str(tmp_path / "cache"), raw.dataset_name_clean, 1234, "train", "10,0,0", 0, len(raw.get_train_data())
    )
    rows = raw.get_train_data().select(index)
    collate = SFTCollator(tokenizer.pad_token_id, 24, pad_to_max_len=True)
    batch = collate([train[i] for i in range(len(train))])
    for i, row in enumerate(rows):
        text = raw.get_prompt_and_chosen(row) + tokenizer.eos_token
        enc = tokenizer(text, max_length=24, padding="max_length", truncation=True, return_tensors="pt")
        assert torch.equal(batch["input_ids"][i], enc["input_ids"][0])
        assert torch.equal(batch["attention_mask"][i], enc["attention_mask"][0])
        expected_labels = enc["input_ids"][0].masked_fill(enc["attention_mask"][0] == 0, -100)
        assert torch.equal(batch["labels"][i], expected_labels)
    assert len(train) == 27 and len(evaluation) == 3  # 90/10 carve of a single file


def test_answer_mask_marks_only_answer_tokens(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "What is red?", "response": "A colour."}] * 3)
    train, _ = build(tmp_path, tokenizer, [path])
    ids, mask = train.samples.sample(0)
    answer = tokenizer.decode(ids[mask.astype(bool)])
    assert answer == " A colour." + tokenizer.eos_token


def test_chat_template_rendering_and_error_without_template(tmp_path, tiny_models, tokenizer):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 4,
    )
    llama_tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    train, _ = build(tmp_path, llama_tok, [path], prompt_template=prompts.CHAT_TEMPLATE)
    ids, mask = train.samples.sample(0)
    assert llama_tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    assert llama_tok.decode(ids[mask.astype(bool)]).startswith("hello<|im_end|>")
    with pytest.raises(DschatError, match="no chat template"):
        build(tmp_path, tokenizer, [path], prompt_template=prompts.CHAT_TEMPLATE)


# --- blending ---------------------------------------------------------------------------------------


def test_blend_is_concatenation_reshuffled_with_the_seed(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows(10, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(20, "b"))
    single_a, _ = build(tmp_path, tokenizer, [a])
    single_b, _ = build(tmp_path, tokenizer, [b])
    blended, _ = build(tmp_path, tokenizer, [a, b])
    order = splits.shuffle_indices(1234, len(single_a) + len(single_b))
    both = TokenizedSamples.concat([single_a.samples, single_b.samples])
    for position, source in enumerate(order):
        assert np.array_equal(blended.samples.sample(position)[0], both.sample(int(source))[0])
    again, _ = build(tmp_path, tokenizer, [a, b], reload=True)
    assert np.array_equal(again.samples.input_ids, blended.samples.input_ids)


def test_sft_only_data_is_appended_whole_and_reshuffled(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows(20, "a"))
    s = write_jsonl(tmp_path / "s.jsonl", qa_rows(10, "s"))
    main_only, _ = build(tmp_path, tokenizer, [a], data_split="5,3,2")
    with_sft, _ = build(tmp_path, tokenizer, [a], data_split="5,3,2", sft_only_data_path=[s])
    assert len(with_sft) == len(main_only) + 9  # the SFT-only file keeps its whole 90% train part


def test_data_weights_resample_to_the_stated_proportions(tmp_path, tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", qa_rows(40, "a"))
    b = write_jsonl(tmp_path / "b.jsonl", qa_rows(40, "b"))
    train, _ = build(tmp_path, tokenizer, [a, b], data_weights=[3.0, 1.0])
    texts = [tokenizer.decode(train.samples.sample(i)[0]) for i in range(len(train))]
    from_a = sum(" a question" in t for t in texts)
    assert len(train) == 72 and from_a == 54


# --- cache ------------------------------------------------------------------------------------------


def test_cache_is_reused_and_rebuilt_when_a_keyed_argument_changes(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(12))
    first, _ = build(tmp_path, tokenizer, [path])
    calls = []
    original = data_utils.build_phase1
    monkeypatch.setattr(data_utils, "build_phase1", lambda *a, **k: calls.append(1) or original(*a, **k))
    again, _ = build(tmp_path, tokenizer, [path])
    assert calls == [] and np.array_equal(again.samples.input_ids, first.samples.input_ids)
    for change in (
        {"max_seq_len": 32},
        {"seed": 9},
        {"data_split": "9,1,0"},
        {"prompt_template": "upstream", "data_weights": [1.0]},
    ):
        calls.clear()
        build(tmp_path, tokenizer, [path], **change)
        assert calls == [1], change
    calls.clear()
    os.utime(path, ns=(1, 1))  # an edited data file changes the key
    build(tmp_path, tokenizer, [path])
    assert calls == [1]


def test_crash_mid_build_leaves_nothing_trusted(tmp_path, tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(12))
    real_save = TokenizedSamples.save

    def crash(self, target, meta):
        real_save(self, target, meta)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(TokenizedSamples, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, tokenizer, [path])
    cache = tmp_path / "cache"
    assert not list(
        cache.glob("traindata_*")
    )  # eval is written first, train (the marker of completeness) last
    monkeypatch.setattr(TokenizedSamples, "save", real_save)
    train, _ = build(tmp_path, tokenizer, [path])
    assert len(train) > 0
    target = next(cache.glob("traindata_*"))
    target.write_bytes(target.read_bytes()[:50])  # a torn file is detected and rebuilt
    train, _ = build(tmp_path, tokenizer, [path])
    assert len(train) > 0 and not list(cache.glob("*.tmp*"))


def test_cache_files_hold_no_pickle(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(12))
    build(tmp_path, tokenizer, [path])
    for file in (tmp_path / "cache").glob("*data_*.npz"):
        with np.load(file, allow_pickle=False) as data:
            assert set(data.files) == {"input_ids", "answer_mask", "offsets", "meta"}


# --- report and errors ------------------------------------------------------------------------------


def test_report_counts_drops_truncation_and_marks_loss_tokens(tmp_path, tokenizer, caplog):
    rows = qa_rows(18) + [{"prompt": "", "response": "x"}, {"prompt": "y", "response": " "}]
    rows += [{"prompt": "long " * 40, "response": "z"}] * 2
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    caplog.set_level(logging.INFO, logger="dschat")
    build(tmp_path, tokenizer, [path], max_seq_len=20)
    text = caplog.text
    assert "records=" in text and "empty prompt=" in text and "empty response=" in text
    assert "[[" in text and "]]" in text
    assert "longer than --max_seq_len 20" in text


def test_empty_training_set_is_a_clear_error(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "", "response": "x"}] * 5)
    with pytest.raises(DschatError, match="no training samples"):
        build(tmp_path, tokenizer, [path])


def test_prepare_data_cli_builds_the_cache_and_reports_errors_in_one_line(tmp_path, tiny_models, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", qa_rows(12))
    cache = tmp_path / "prep"
    argv = [
        "--model_name_or_path",
        str(tiny_models["opt"]),
        "--data_path",
        path,
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(cache),
        "--max_seq_len",
        "32",
    ]
    assert run_cli(prepare_data.main, argv) == 0
    assert list(cache.glob("traindata_*.npz")) and list(cache.glob("evaldata_*.npz"))
    capsys.readouterr()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p"}])
    assert run_cli(prepare_data.main, argv[:3] + [bad] + argv[4:]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "bad.jsonl" in err[0] and "Traceback" not in err[0]
    assert run_cli(prepare_data.main, argv[:3] + ["no/such/dataset"] + argv[4:]) == 2
    assert "unknown dataset" in capsys.readouterr().err
