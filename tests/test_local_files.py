"""Local json/jsonl/parquet data: path detection, split carving, record shapes, exact text, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dschat.errors import DschatError
from dschat.utils.data import splits
from dschat.utils.data.local_files import LocalFileDataset, clean_name, is_local_data_path

SEED = 1234
SUFFIXES = (".json", ".jsonl", ".parquet")


def write(path: Path, records: list[dict]) -> Path:
    """Write records as a JSON list (.json), one object per line (.jsonl) or a parquet table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def load(tmp_path: Path, path: Path) -> LocalFileDataset:
    return LocalFileDataset(str(tmp_path / "cache"), SEED, 0, str(path))


def error_of(tmp_path: Path, path: Path) -> str:
    with pytest.raises(DschatError) as info:
        load(tmp_path, path)
    message = str(info.value)
    assert path.name in message and "Fix" in message, message
    return message


# (record, prompt_and_chosen, prompt, chosen), written independently of the prompts module.
SHAPES = {
    "prompt_chosen": (
        {
            "prompt": "Human: I have a question. Assistant:",
            "chosen": "Good answer.",
            "rejected": "Bad answer.",
        },
        " Human: I have a question. Assistant: Good answer.",
        " Human: I have a question. Assistant:",
        " Good answer.",
    ),
    "prompt_response": (
        {"prompt": "What is 2+2?", "response": "4."},
        " Human: What is 2+2? Assistant: 4.",
        " Human: What is 2+2? Assistant:",
        " 4.",
    ),
    "prompt_completion": (
        {"prompt": "Say hi.", "completion": "Hi!"},
        " Human: Say hi. Assistant: Hi!",
        " Human: Say hi. Assistant:",
        " Hi!",
    ),
    "alpaca": (
        {"instruction": "Summarise.", "input": "Birds fly south.", "output": "Birds migrate."},
        " Human: Summarise.\n\nBirds fly south. Assistant: Birds migrate.",
        " Human: Summarise.\n\nBirds fly south. Assistant:",
        " Birds migrate.",
    ),
    "alpaca_no_input": (
        {"instruction": "Name a colour.", "input": "", "output": "Blue."},
        " Human: Name a colour. Assistant: Blue.",
        " Human: Name a colour. Assistant:",
        " Blue.",
    ),
    "messages": (
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Name?"},
                {"role": "assistant", "content": "Bot."},
            ]
        },
        " System: Be brief. Human: Hi Assistant: Hello. Human: Name? Assistant: Bot.",
        " System: Be brief. Human: Hi Assistant: Hello. Human: Name? Assistant:",
        " Bot.",
    ),
    "messages_aliases": (
        {"messages": [{"role": "human", "content": "Q"}, {"role": "gpt", "content": "A"}]},
        " Human: Q Assistant: A",
        " Human: Q Assistant:",
        " A",
    ),
    "sharegpt": (
        {
            "conversations": [
                {"from": "system", "value": "Sys."},
                {"from": "human", "value": "Q1"},
                {"from": "gpt", "value": "A1"},
                {"from": "user", "value": "Q2"},
                {"from": "bot", "value": "A2"},
            ]
        },
        " System: Sys. Human: Q1 Assistant: A1 Human: Q2 Assistant: A2",
        " System: Sys. Human: Q1 Assistant: A1 Human: Q2 Assistant:",
        " A2",
    ),
}


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_renders_exact_upstream_text(tmp_path, shape, suffix):
    record, full, prompt, chosen = SHAPES[shape]
    path = write(tmp_path / f"data{suffix}", [record])
    assert is_local_data_path(str(path))
    ds = load(tmp_path, path)
    sample = ds.raw_datasets["train"][0]
    assert ds.get_prompt_and_chosen(sample) == full
    assert ds.get_prompt(sample) == prompt
    assert ds.get_chosen(sample) == chosen
    assert ds.get_prompt(sample) + ds.get_chosen(sample) == full
    assert ds.drop_reason(sample) is None


def test_prompt_chosen_rejected_like_local_jsonfile(tmp_path):
    prompt, chosen, rejected = "Human: I have a question. Assistant:", "Good answer.", "Bad answer."
    path = write(tmp_path / "d.jsonl", [{"prompt": prompt, "chosen": chosen, "rejected": rejected}])
    ds = load(tmp_path, path)
    sample = ds.raw_datasets["train"][0]
    assert ds.get_rejected(sample) == " " + rejected
    assert ds.get_prompt_and_rejected(sample) == " " + prompt + " " + rejected
    assert ds.get_prompt_and_chosen(sample) == " " + prompt + " " + chosen


def test_rejected_absent_gives_none(tmp_path):
    ds = load(tmp_path, write(tmp_path / "d.jsonl", [{"prompt": "Q", "response": "A"}]))
    sample = ds.raw_datasets["train"][0]
    assert ds.get_rejected(sample) is None and ds.get_prompt_and_rejected(sample) is None


def test_conversation_of_each_kind(tmp_path):
    records = [
        {"prompt": "Human: Q1 Assistant: A1 Human: Q2 Assistant:", "chosen": "A2"},
        {"prompt": "Plain question", "chosen": "Plain answer"},
    ]
    ds = load(tmp_path, write(tmp_path / "d.jsonl", records))
    train = ds.raw_datasets["train"]
    assert ds.get_conversation(train[0]) == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    assert ds.get_conversation(train[1]) == [
        {"role": "user", "content": "Plain question"},
        {"role": "assistant", "content": "Plain answer"},
    ]
    sharegpt = load(tmp_path, write(tmp_path / "s.json", [SHAPES["sharegpt"][0]]))
    assert [m["role"] for m in sharegpt.get_conversation(sharegpt.raw_datasets["train"][0])] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]


def carve_expected(n: int) -> tuple[list[int], list[int]]:
    """Upstream's 9,1 carving, computed here from its definition (3.3), not from splits.py."""
    train_size = int(round(0.9 * n))
    eval_size = int(round(0.1 * n))
    train_size -= train_size + eval_size - n
    permutation = np.arange(n, dtype=np.uint32)
    np.random.RandomState(seed=SEED).shuffle(permutation)
    return permutation[:train_size].tolist(), permutation[train_size:].tolist()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_single_file_eval_is_carved_and_stable(tmp_path, suffix):
    n = 23
    path = write(tmp_path / f"all{suffix}", [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(n)])
    ds = load(tmp_path, path)
    train, evalset = ds.get_train_data(), ds.get_eval_data()
    bounds = splits.split_boundaries("9,1", n)
    assert (len(train), len(evalset)) == (bounds[1], bounds[2] - bounds[1]) == (21, 2)
    want_train, want_eval = carve_expected(n)
    assert train["prompt"] == [None] * 21  # prompt/response records keep their text in messages
    assert [m[0]["content"] for m in train["messages"]] == [f"q{i}" for i in want_train]
    assert [m[0]["content"] for m in evalset["messages"]] == [f"q{i}" for i in want_eval]
    again = load(tmp_path, path)
    assert again.dataset_name_clean == ds.dataset_name_clean and again.dataset_name == str(path)
    assert again.get_eval_data()["source"] == evalset["source"]
    cached = list((tmp_path / "cache").glob(f"{ds.dataset_name_clean}_seed{SEED}_train_eval_9,1_*.npy"))
    assert len(cached) == 2


@pytest.mark.parametrize("eval_stem", ["eval", "test", "validation"])
def test_directory_with_train_and_eval_files(tmp_path, eval_stem):
    write(tmp_path / "d" / "train.jsonl", [{"prompt": f"t{i}", "chosen": "x"} for i in range(7)])
    write(tmp_path / "d" / f"{eval_stem}.parquet", [{"prompt": f"e{i}", "chosen": "y"} for i in range(3)])
    (tmp_path / "d" / "README.md").write_text("ignored")
    assert is_local_data_path(str(tmp_path / "d"))
    ds = load(tmp_path, tmp_path / "d")
    assert ds.get_train_data()["prompt"] == [f"t{i}" for i in range(7)]
    assert ds.get_eval_data()["prompt"] == [f"e{i}" for i in range(3)]
    assert not (tmp_path / "cache").exists()  # nothing carved


def test_directory_of_other_names_is_all_training_in_name_order(tmp_path):
    write(
        tmp_path / "d" / "b.json",
        [{"messages": [{"role": "user", "content": "mq"}, {"role": "assistant", "content": "ma"}]}],
    )
    write(tmp_path / "d" / "a.jsonl", [{"prompt": f"p{i}", "chosen": f"c{i}"} for i in range(9)])
    ds = load(tmp_path, tmp_path / "d")
    full = ds.raw_datasets["train"]
    assert len(full) == 10 and "eval" not in ds.raw_datasets
    assert full["kind"] == ["prompt_chosen"] * 9 + ["messages"]
    assert ds.get_prompt_and_chosen(full[0]) == " p0 c0"
    assert ds.get_prompt_and_chosen(full[9]) == " Human: mq Assistant: ma"
    assert (len(ds.get_train_data()), len(ds.get_eval_data())) == (9, 1)


def test_clean_name_is_stable_and_safe(tmp_path, monkeypatch):
    path = write(tmp_path / "my data.v2.jsonl", [{"prompt": "q", "response": "a"}])
    name = clean_name(str(path))
    assert re.fullmatch(r"local_my_data_v2_jsonl_[0-9a-f]{8}", name)
    monkeypatch.chdir(tmp_path)
    assert clean_name("my data.v2.jsonl") == name
    other = write(tmp_path / "x" / "my data.v2.jsonl", [{"prompt": "q", "response": "a"}])
    assert clean_name(str(other)) != name


def test_empty_samples_are_skipped_with_reasons(tmp_path):
    records = [
        {"prompt": "q", "chosen": "a"},
        {"prompt": "", "chosen": "a"},
        {"prompt": "q", "chosen": None},
        {"prompt": "q", "chosen": "   "},
    ]
    ds = load(tmp_path, write(tmp_path / "d.json", records))
    train = ds.raw_datasets["train"]
    assert [ds.drop_reason(s) for s in train] == [None, "empty prompt", "empty response", "empty response"]
    assert [ds.get_prompt_and_chosen(s) for s in train] == [" q a", None, None, None]
    assert ds.get_conversation(train[1]) is None
    assert dict(ds.drop_reasons) == {"empty prompt": 1, "empty response": 2}
    convo = [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]
    chat = load(tmp_path, write(tmp_path / "c.jsonl", [{"messages": convo}]))
    assert chat.drop_reason(chat.raw_datasets["train"][0]) == "empty response"
    assert chat.get_prompt_and_chosen(chat.raw_datasets["train"][0]) is None


def test_json_file_with_one_object_per_line_is_accepted(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"prompt": "q1", "response": "a1"}\n\n{"prompt": "q2", "response": "a2"}\n')
    assert len(load(tmp_path, path).raw_datasets["train"]) == 2


def test_malformed_json_names_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\n\n\n{"prompt": "q", "response": }\n')
    assert "line 4" in error_of(tmp_path, path)
    listed = tmp_path / "l.json"
    listed.write_text('[\n{"prompt": "q", "response": "a"},\n{"prompt": "q" "response": "a"}\n]\n')
    assert "line 3" in error_of(tmp_path, listed)


def test_non_object_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "q", "response": "a"}\n[1, 2]\n')
    message = error_of(tmp_path, path)
    assert "line 2" in message and "array" in message
    listed = tmp_path / "l.json"
    listed.write_text('[{"prompt": "q", "response": "a"}, "text"]')
    assert "record 2" in error_of(tmp_path, listed)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_missing_fields_name_record_and_expected_fields(tmp_path, suffix):
    path = write(tmp_path / f"d{suffix}", [{"prompt": "q", "chosen": "a"}, {"prompt": "q", "answer": "a"}])
    message = error_of(tmp_path, path)
    assert ("line 2" if suffix == ".jsonl" else "record 2") in message
    assert "['prompt', 'chosen']" in message and "['answer', 'prompt']" in message


def test_unknown_first_record_shape_lists_accepted_shapes(tmp_path):
    message = error_of(tmp_path, write(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}]))
    assert "{prompt, chosen[, rejected]}" in message and "{conversations: [{from, value}, ...]}" in message


def test_non_string_field(tmp_path):
    assert "'chosen'" in error_of(tmp_path, write(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": 5}]))


@pytest.mark.parametrize(
    "turns, needle",
    [
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
            ],
            "ends with a user turn",
        ),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "no user turn"),
        ([{"role": "wizard", "content": "q"}, {"role": "assistant", "content": "a"}], "'wizard'"),
        ([{"role": "user"}], "lacks"),
        ([], "empty list"),
    ],
)
def test_invalid_conversations(tmp_path, turns, needle):
    path = write(tmp_path / "d.jsonl", [{"messages": turns}])
    assert needle in error_of(tmp_path, path)


def test_sharegpt_ending_with_human_turn(tmp_path):
    record = {"conversations": [{"from": "human", "value": "q"}]}
    assert "ends with a user turn" in error_of(tmp_path, write(tmp_path / "s.json", [record]))


@pytest.mark.parametrize(
    "name, content", [("e.jsonl", ""), ("b.jsonl", "\n \n"), ("l.json", "[]"), ("w.json", "  ")]
)
def test_empty_files(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert "empty" in error_of(tmp_path, tmp_path / name)


def test_empty_and_unreadable_parquet(tmp_path):
    empty = tmp_path / "e.parquet"
    pq.write_table(
        pa.table({"prompt": pa.array([], pa.string()), "chosen": pa.array([], pa.string())}), empty
    )
    assert "empty" in error_of(tmp_path, empty)
    garbage = tmp_path / "g.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    assert "parquet" in error_of(tmp_path, garbage)


def test_unknown_suffix_and_empty_directory(tmp_path):
    csv = tmp_path / "data.csv"
    csv.write_text("prompt,chosen\nq,a\n")
    with pytest.raises(DschatError, match=r"data\.csv.*'\.csv'.*Fix"):
        is_local_data_path(str(csv))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DschatError, match=r"nothing.*without \.json/\.jsonl/\.parquet files.*Fix"):
        is_local_data_path(str(tmp_path / "nothing"))


def test_ambiguous_directories(tmp_path):
    write(tmp_path / "a" / "eval.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(DschatError, match="no train"):
        load(tmp_path, tmp_path / "a")
    write(tmp_path / "b" / "train.jsonl", [{"prompt": "q", "response": "a"}])
    write(tmp_path / "b" / "test.jsonl", [{"prompt": "q", "response": "a"}])
    write(tmp_path / "b" / "extra.jsonl", [{"prompt": "q", "response": "a"}])
    with pytest.raises(DschatError, match="extra.jsonl.*Fix"):
        load(tmp_path, tmp_path / "b")


def test_hub_names_and_save_to_disk_dirs_are_not_local_files(tmp_path):
    import datasets

    assert not is_local_data_path("Dahoas/rm-static")
    assert not is_local_data_path("local/jsonfile")
    table = datasets.Dataset.from_list([{"prompt": "q", "chosen": "a"}])
    table.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "dict"))
    assert not is_local_data_path(str(tmp_path / "single"))
    assert not is_local_data_path(str(tmp_path / "dict"))
    assert is_local_data_path(str(write(tmp_path / "x" / "train.jsonl", [{"prompt": "q", "response": "a"}])))
