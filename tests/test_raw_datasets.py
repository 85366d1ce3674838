"""Raw-dataset adapters: exact upstream strings on fixtures in each dataset's real layout, splits, dispatch."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from dschat.errors import DschatError
from dschat.utils.data import prompts
from dschat.utils.data import raw_datasets as rd
from dschat.utils.data.local_files import LocalFileDataset
from dschat.utils.data.raw_datasets import get_raw_dataset

SEED = 1234
CARVED_ROWS = 20  # "9,1" over 20 rows -> boundaries [0, 18, 20]

# Upstream's dispatch order, written out independently of the module's registry.
UPSTREAM_ORDER = (
    "Dahoas/rm-static",
    "Dahoas/full-hh-rlhf",
    "Dahoas/synthetic-instruct-gptj-pairwise",
    "yitingxie/rlhf-reward-datasets",
    "openai/webgpt_comparisons",
    "stanfordnlp/SHP",
    "pvduy/sharegpt_alpaca_oa_vicuna_format",
    "wangrui6/Zhihu-KOL",
    "Cohere/miracl-zh-queries-22-12",
    "Hello-SimpleAI/HC3-Chinese",
    "mkqa-Chinese",
    "mkqa-Japanese",
    "Cohere/miracl-ja-queries-22-12",
    "lmqg/qg_jaquad",
    "lmqg/qag_jaquad",
    "local/jsonfile",
)


def hh_row(i: int) -> dict:
    return {
        "prompt": f"\n\nHuman: Hi {i}\n\nAssistant: Hello!\n\nHuman: What is {i} plus one?\n\nAssistant:",
        "response": f" It is {i + 1}.",
        "chosen": f" It is {i + 1}.",
        "rejected": " No idea.",
    }


def webgpt_row(i: int) -> dict:
    return {
        "question": {"id": f"q{i}", "full_text": f"Why is the sky blue {i}?", "dataset": "eli5"},
        "quotes_0": {"title": ["Sky"], "extract": ["Light scatters."]},
        "answer_0": "Because of magic(1).",
        "tokens_0": ["Because"],
        "score_0": -1.0,
        "quotes_1": {"title": ["Physics"], "extract": ["Rayleigh."]},
        "answer_1": "Rayleigh scattering [1] (Smith, 2003) explains it[2].",
        "tokens_1": ["Rayleigh"],
        "score_1": 1.0,
    }


def shp_row(i: int) -> dict:
    return {
        "post_id": f"p{i}",
        "domain": "askscience_train",
        "upvote_ratio": 0.9,
        "history": f"Why do cats purr {i}?",
        "c_root_id_A": "ca",
        "c_root_id_B": "cb",
        "created_at_utc_A": 1,
        "created_at_utc_B": 2,
        "score_A": 10,
        "score_B": 3,
        "human_ref_A": "To communicate.",
        "human_ref_B": "Nobody knows.",
        "labels": 1 if i % 2 == 0 else 0,
        "seconds_difference": 1.0,
        "score_ratio": 3.3,
    }


def miracl_row(query: str, positive: str, negative: str) -> Callable[[int], dict]:
    def row(i: int) -> dict:
        return {
            "query_id": str(i),
            "query": f"{query}{i}？",
            "positive_passages": [{"docid": f"{i}#0", "text": positive, "title": "t"}],
            "negative_passages": [{"docid": f"{i}#1", "text": negative, "title": "t"}],
        }

    return row


def mkqa_row(i: int) -> dict:
    def answer(text: str) -> list[dict]:
        return [{"type": 0, "entity": "Q692", "text": text, "aliases": ["Shakespeare"]}]

    queries = {
        "en": f"who wrote hamlet {i}",
        "ja": f"ハムレットを書いたのは誰{i}",
        "zh_cn": f"谁写了哈姆雷特{i}",
    }
    answers = {
        "en": answer("William Shakespeare"),
        "ja": answer("シェイクスピア"),
        "zh_cn": answer("莎士比亚"),
    }
    return {"example_id": i, "queries": queries, "query": queries["en"], "answers": answers}


@dataclass
class Case:
    path: str  # the hub name: the fixture is saved at tmp_path / path, so dispatch sees upstream's local copy
    cls: type
    name: str
    clean: str
    eval_split: str | None  # None: 90/10 carve of the train split
    row: Callable[[int], dict]
    expected: tuple  # prompt, chosen, rejected, prompt_and_chosen, prompt_and_rejected for row(0)


HH_PROMPT = "\n\nHuman: Hi 0\n\nAssistant: Hello!\n\nHuman: What is 0 plus one?\n\nAssistant:"
HH_EXPECTED = (HH_PROMPT, " It is 1.", " No idea.", HH_PROMPT + " It is 1.", HH_PROMPT + " No idea.")
CASES = [
    Case(
        "Dahoas/rm-static",
        rd.DahoasRmstaticDataset,
        "Dahoas/rm-static",
        "Dahoas_rm_static",
        "test",
        hh_row,
        HH_EXPECTED,
    ),
    Case(
        "Dahoas/full-hh-rlhf",
        rd.DahoasFullhhrlhfDataset,
        "Dahoas/full-hh-rlhf",
        "Dahoas_full_hh_rlhf",
        "test",
        hh_row,
        HH_EXPECTED,
    ),
    Case(
        "Dahoas/synthetic-instruct-gptj-pairwise",
        rd.DahoasSyntheticinstructgptjpairwiseDataset,
        "Dahoas/synthetic-instruct-gptj-pairwise",
        "Dahoas_synthetic_instruct_gptj_pairwise",
        None,
        lambda i: {
            "prompt": f"Give {i} tips for sleeping.",
            "chosen": "Keep a schedule.",
            "rejected": "Drink coffee.",
        },
        (
            " Human: Give 0 tips for sleeping. Assistant:",
            " Keep a schedule.",
            " Drink coffee.",
            " Human: Give 0 tips for sleeping. Assistant: Keep a schedule.",
            " Human: Give 0 tips for sleeping. Assistant: Drink coffee.",
        ),
    ),
    Case(
        "yitingxie/rlhf-reward-datasets",
        rd.YitingxieRlhfrewarddatasetsDataset,
        "yitingxie/rlhf-reward-datasets",
        "yitingxie_rlhf_reward_datasets",
        "test",
        lambda i: {
            "prompt": f"\n\nHuman: Name a color {i}.\n\n",
            "chosen": "Assistant: Blue.",
            "rejected": "Assistant: Ten. Assistant: Eleven.",
        },
        (
            "\n\nHuman: Name a color 0.\n\nAssistant:",
            " Blue.",
            " Eleven.",
            "\n\nHuman: Name a color 0.\n\nAssistant: Blue.",
            "\n\nHuman: Name a color 0.\n\nAssistant: Ten. Assistant: Eleven.",
        ),
    ),
    Case(
        "openai/webgpt_comparisons",
        rd.OpenaiWebgptcomparisonsDataset,
        "openai/webgpt_comparisons",
        "openai_webgpt_comparisons",
        None,
        webgpt_row,
        (
            " Human: Why is the sky blue 0? Assistant:",
            " Rayleigh scattering explains it.",
            " Because of magic.",
            " Human: Why is the sky blue 0? Assistant: Rayleigh scattering explains it.",
            " Human: Why is the sky blue 0? Assistant: Because of magic.",
        ),
    ),
    Case(
        "stanfordnlp/SHP",
        rd.StanfordnlpSHPDataset,
        "stanfordnlp/SHP",
        "stanfordnlp_SHP",
        "validation",
        shp_row,
        (
            " Human: Why do cats purr 0? Assistant:",
            " To communicate.",
            " Nobody knows.",
            " Human: Why do cats purr 0? Assistant: To communicate.",
            " Human: Why do cats purr 0? Assistant: Nobody knows.",
        ),
    ),
    Case(
        "pvduy/sharegpt_alpaca_oa_vicuna_format",
        rd.PvduySharegptalpacaoavicunaformatDataset,
        "pvduy/sharegpt_alpaca_oa_vicuna_format",
        "pvduy_sharegpt_alpaca_oa_vicuna_format",
        "test",
        lambda i: {
            "prompt": f"USER: Say hi {i} ASSISTANT: Hi!</s>USER: Again ASSISTANT:",
            "label": "Hi there!",
        },
        (
            "Human: Say hi 0 Assistant: Hi!</s>Human: Again Assistant:",
            " Hi there!",
            None,
            "Human: Say hi 0 Assistant: Hi!</s>Human: Again Assistant: Hi there!",
            None,
        ),
    ),
    Case(
        "wangrui6/Zhihu-KOL",
        rd.Wangrui6ZhihuKOLDataset,
        "wangrui6/Zhihu-KOL",
        "wangrui6_Zhihu_KOL",
        None,
        lambda i: {
            "INSTRUCTION": f"如何学习编程{i}？",
            "RESPONSE": "多写代码。",
            "SOURCE": "Zhihu",
            "METADATA": '{"question_id": 1}',
        },
        (
            " Human: 如何学习编程0？ Assistant:",
            " 多写代码。",
            None,
            " Human: 如何学习编程0？ Assistant: 多写代码。",
            None,
        ),
    ),
    Case(
        "Cohere/miracl-zh-queries-22-12",
        rd.CohereMiraclzhqueries2212Dataset,
        "Cohere/miracl-zh-queries-22-12",
        "Cohere_miracl_zh_queries_22_12",
        "dev",
        miracl_row("长城有多长", "长城长两万多公里。", "黄河是一条河。"),
        (
            " Human: 长城有多长0？ Assistant:",
            " 长城长两万多公里。",
            " 黄河是一条河。",
            " Human: 长城有多长0？ Assistant: 长城长两万多公里。",
            " Human: 长城有多长0？ Assistant: 黄河是一条河。",
        ),
    ),
    Case(
        "Hello-SimpleAI/HC3-Chinese",
        rd.HelloSimpleAIHC3ChineseDataset,
        "Hello-SimpleAI/HC3-Chinese",
        "Hello_SimpleAI_HC3_Chinese",
        None,
        lambda i: {
            "id": str(i),
            "question": f"什么是人工智能{i}？",
            "human_answers": ["计算机科学的分支。", "x"],
            "chatgpt_answers": ["AI 是一种技术。"],
        },
        (
            " Human: 什么是人工智能0？ Assistant:",
            " 计算机科学的分支。",
            None,
            " Human: 什么是人工智能0？ Assistant: 计算机科学的分支。",
            None,
        ),
    ),
    Case(
        "mkqa-Chinese",
        rd.MkqaChineseDataset,
        "mkqa",
        "mkqa",
        None,
        mkqa_row,
        (
            " Human: 谁写了哈姆雷特0 Assistant:",
            " 莎士比亚",
            None,
            " Human: 谁写了哈姆雷特0 Assistant: 莎士比亚",
            None,
        ),
    ),
    Case(
        "mkqa-Japanese",
        rd.MkqaJapaneseDataset,
        "mkqa",
        "mkqa",
        None,
        mkqa_row,
        (
            " Human: ハムレットを書いたのは誰0 Assistant:",
            " シェイクスピア",
            None,
            " Human: ハムレットを書いたのは誰0 Assistant: シェイクスピア",
            None,
        ),
    ),
    Case(
        "Cohere/miracl-ja-queries-22-12",
        rd.CohereMiracljaqueries2212Dataset,
        "Cohere/miracl-ja-queries-22-12",
        "Cohere_miracl_ja_queries_22_12",
        "dev",
        miracl_row("富士山の高さは", "3776メートルです。", "琵琶湖は湖です。"),
        (
            " Human: 富士山の高さは0？ Assistant:",
            " 3776メートルです。",
            " 琵琶湖は湖です。",
            " Human: 富士山の高さは0？ Assistant: 3776メートルです。",
            " Human: 富士山の高さは0？ Assistant: 琵琶湖は湖です。",
        ),
    ),
    Case(
        "lmqg/qg_jaquad",
        rd.LmqgQgjaquadDataset,
        "lmqg/qg_jaquad",
        "lmqg_qg_jaquad",
        "validation",
        lambda i: {
            "answer": "東京",
            "paragraph_question": "q",
            "question": f"日本の首都はどこ{i}？",
            "sentence": "日本の首都は東京である。",
            "paragraph": "日本の首都は東京である。人口が多い。",
            "sentence_answer": "s",
            "paragraph_answer": "p",
            "paragraph_sentence": "ps",
            "paragraph_id": f"p{i}",
        },
        (
            " Human: 日本の首都はどこ0？ Assistant:",
            " 日本の首都は東京である。",
            None,
            " Human: 日本の首都はどこ0？ Assistant: 日本の首都は東京である。",
            None,
        ),
    ),
    Case(
        "lmqg/qag_jaquad",
        rd.LmqgQagjaquadDataset,
        "lmqg/qag_jaquad",
        "lmqg_qag_jaquad",
        "validation",
        lambda i: {
            "paragraph": f"富士山は日本一高い山である{i}。",
            "questions": ["日本一高い山は？", "高さは？"],
            "answers": ["富士山", "3776m"],
            "paragraph_id": f"p{i}",
            "questions_answers": "question: 日本一高い山は？, answer: 富士山",
        },
        (
            " Human: 日本一高い山は？ Assistant:",
            " 富士山は日本一高い山である0。",
            None,
            " Human: 日本一高い山は？ Assistant: 富士山は日本一高い山である0。",
            None,
        ),
    ),
]


def save_fixture(tmp_path: Path, case: Case) -> Path:
    """Save the case's rows with its real split names, as ``save_to_disk`` would for a hub download."""
    if case.eval_split is None:
        splits = {"train": [case.row(i) for i in range(CARVED_ROWS)]}
    else:
        splits = {
            "train": [case.row(i) for i in range(3)],
            case.eval_split: [case.row(100 + i) for i in range(2)],
        }
        if case.eval_split != "test":
            splits["test"] = [case.row(200)]  # a decoy: the adapter must read its own eval split
    path = tmp_path / case.path
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(str(path))
    return path


def all_strings(adapter, sample) -> tuple:
    return (
        adapter.get_prompt(sample),
        adapter.get_chosen(sample),
        adapter.get_rejected(sample),
        adapter.get_prompt_and_chosen(sample),
        adapter.get_prompt_and_rejected(sample),
    )


def test_known_datasets_in_upstream_order():
    assert rd.KNOWN_DATASETS == UPSTREAM_ORDER
    assert len(CASES) == len(UPSTREAM_ORDER) - 1  # + local/jsonfile, tested below


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.path)
def test_adapter_strings_and_splits(case: Case, tmp_path, caplog):
    path = save_fixture(tmp_path, case)
    adapter = get_raw_dataset(str(path), str(tmp_path / "cache"), SEED, 0)
    assert type(adapter) is case.cls
    assert (adapter.dataset_name, adapter.dataset_name_clean) == (case.name, case.clean)

    train, evaluation = adapter.get_train_data(), adapter.get_eval_data()
    if case.eval_split is None:
        assert (len(train), len(evaluation)) == (18, 2)
    else:
        assert (len(train), len(evaluation)) == (3, 2)
        assert evaluation[0] == case.row(100) and train[0] == case.row(0)

    matches = [row for row in list(train) + list(evaluation) if row == case.row(0)]
    assert len(matches) == 1
    with caplog.at_level(logging.WARNING):
        got = all_strings(adapter, matches[0])
    assert got == case.expected
    assert got[0] + got[1] == got[3]
    if case.expected[2] is None:  # no rejected answers: upstream warns on every request
        assert sum("no rejected" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.path)
def test_every_adapter_speaks_the_prompts_modules_format(case: Case, tmp_path):
    """What an adapter renders parses back, with the prompts module's parser, into a dialogue ending in the
    chosen answer: the adapters and the one owner of the format agree."""
    adapter = get_raw_dataset(str(save_fixture(tmp_path, case)), str(tmp_path / "cache"), SEED, 0)
    row = next(r for r in list(adapter.get_train_data()) + list(adapter.get_eval_data()) if r == case.row(0))
    messages = prompts.parse_upstream_dialogue(adapter.get_prompt_and_chosen(row))
    assert messages[-1]["role"] == "assistant" and messages[0]["role"] == "user"
    assert messages[-1]["content"] == case.expected[1].strip()
    assert adapter.get_conversation(row) == messages


def test_carving_is_seeded_stable_and_matches_upstream_permutation(tmp_path):
    case = next(c for c in CASES if c.path == "Dahoas/synthetic-instruct-gptj-pairwise")
    path = str(save_fixture(tmp_path, case))

    def prompts_of(seed: int, cache: str) -> tuple[list[str], list[str]]:
        adapter = get_raw_dataset(path, str(tmp_path / cache), seed, 0)
        return adapter.get_train_data()["prompt"], adapter.get_eval_data()["prompt"]

    train, evaluation = prompts_of(SEED, "a")
    permutation = np.random.RandomState(SEED).permutation(CARVED_ROWS)
    assert train == [case.row(i)["prompt"] for i in permutation[:18]]
    assert evaluation == [case.row(i)["prompt"] for i in permutation[18:]]
    for part in (0, 1):
        assert (
            tmp_path / "a" / f"Dahoas_synthetic_instruct_gptj_pairwise_seed{SEED}_train_eval_9,1_{part}.npy"
        ).is_file()
    assert prompts_of(SEED, "b") == (train, evaluation)  # rebuilt from scratch: same rows
    assert prompts_of(SEED, "a") == (train, evaluation)  # read back from the cached index files
    assert prompts_of(SEED + 1, "c")[0] != train


def test_webgpt_tie_prefers_answer_0_and_shp_label_0_prefers_b():
    adapter = object.__new__(rd.OpenaiWebgptcomparisonsDataset)
    tie = {**webgpt_row(0), "score_0": 0.0, "score_1": 0.0}
    assert adapter.get_chosen(tie) == " Because of magic."
    assert adapter.get_rejected(tie) == " Rayleigh scattering explains it."
    shp = object.__new__(rd.StanfordnlpSHPDataset)
    assert shp.get_chosen(shp_row(1)) == " Nobody knows."
    assert shp.get_prompt_and_rejected(shp_row(1)) == " Human: Why do cats purr 1? Assistant: To communicate."


def test_none_cases_skip_samples():
    sharegpt = object.__new__(rd.PvduySharegptalpacaoavicunaformatDataset)
    for sample in (
        {"prompt": "", "label": "a"},
        {"prompt": None, "label": "a"},
        {"prompt": "USER: q", "label": ""},
    ):
        assert sharegpt.get_prompt_and_chosen(sample) is None
    assert sharegpt.get_prompt({"prompt": "", "label": "a"}) is None
    assert sharegpt.get_chosen({"prompt": "q", "label": None}) is None

    zhihu = object.__new__(rd.Wangrui6ZhihuKOLDataset)
    assert zhihu.get_prompt_and_chosen({"INSTRUCTION": None, "RESPONSE": "r"}) is None
    assert zhihu.get_prompt_and_chosen({"INSTRUCTION": "q", "RESPONSE": None}) is None
    assert zhihu.get_prompt({"INSTRUCTION": None}) is None

    hc3 = object.__new__(rd.HelloSimpleAIHC3ChineseDataset)
    assert hc3.get_prompt_and_chosen({"question": None, "human_answers": ["a"]}) is None

    mkqa = object.__new__(rd.MkqaChineseDataset)
    unanswerable = mkqa_row(0)
    unanswerable["answers"]["zh_cn"][0]["text"] = None
    assert mkqa.get_chosen(unanswerable) is None and mkqa.get_prompt_and_chosen(unanswerable) is None

    miracl = object.__new__(rd.CohereMiracljaqueries2212Dataset)
    no_negatives = {**miracl_row("q", "p", "n")(0), "negative_passages": []}
    assert miracl.get_prompt_and_rejected(no_negatives) is None
    assert miracl.get_prompt_and_chosen(no_negatives) == " Human: q0？ Assistant: p"


def write_jsonfile_data(root: Path) -> None:
    (root / "data").mkdir(parents=True)
    train = [
        {"prompt": f"Human: Question {i}? Assistant:", "chosen": "Good answer.", "rejected": "Bad answer."}
        for i in range(3)
    ]
    (root / "data" / "train.json").write_text(json.dumps(train))  # a JSON list, as upstream's README shows
    evaluation = [{"prompt": "Human: Eval? Assistant:", "chosen": None, "rejected": "Bad."}] * 2
    (root / "data" / "eval.json").write_text(
        "".join(json.dumps(row) + "\n" for row in evaluation)
    )  # JSON lines


def test_local_jsonfile(tmp_path, monkeypatch):
    write_jsonfile_data(tmp_path / "repo")
    monkeypatch.setattr(rd, "jsonfile_root", lambda: str(tmp_path / "repo"))
    adapter = get_raw_dataset("local/jsonfile", str(tmp_path / "cache"), SEED, 0)
    assert type(adapter) is rd.LocalJsonFileDataset
    assert (adapter.dataset_name, adapter.dataset_name_clean) == ("local/jsonfile", "jsonfile")
    train, evaluation = adapter.get_train_data(), adapter.get_eval_data()
    assert (len(train), len(evaluation)) == (3, 2)
    assert all_strings(adapter, train[1]) == (
        " Human: Question 1? Assistant:",
        " Good answer.",
        " Bad answer.",
        " Human: Question 1? Assistant: Good answer.",
        " Human: Question 1? Assistant: Bad answer.",
    )
    assert adapter.get_prompt_and_chosen(evaluation[0]) is None
    assert adapter.get_prompt_and_rejected(evaluation[0]) == " Human: Eval? Assistant: Bad."
    direct = rd.LocalJsonFileDataset(str(tmp_path / "cache"), SEED, 0, root=tmp_path / "repo")
    assert direct.get_train_data()["prompt"] == train["prompt"]


def test_local_jsonfile_default_root_is_repo_root():
    assert Path(rd.jsonfile_root()) == Path(rd.__file__).resolve().parents[3]


def test_local_jsonfile_missing_files(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text("[]")
    with pytest.raises(DschatError) as err:
        rd.LocalJsonFileDataset("unused", SEED, 0, root=tmp_path)
    message = str(err.value)
    assert (
        str(tmp_path / "data" / "train.json") in message and str(tmp_path / "data" / "eval.json") in message
    )
    assert "--data_path" in message


def test_unknown_dataset_lists_known_names():
    with pytest.raises(DschatError) as err:
        get_raw_dataset("someone/unknown-data", "unused", SEED, 0)
    message = str(err.value)
    assert "unknown dataset 'someone/unknown-data'" in message
    assert all(name in message for name in UPSTREAM_ORDER)
    assert ".json/.jsonl/.parquet" in message


def test_hub_name_that_cannot_load_explains_save_to_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no relative "Dahoas/rm-static" path; conftest sets HF_DATASETS_OFFLINE=1
    with pytest.raises(DschatError, match="save_to_disk"):
        get_raw_dataset("Dahoas/rm-static", str(tmp_path / "cache"), SEED, 0)
    with pytest.raises(DschatError, match="'mkqa'"):  # the mkqa adapters load HF "mkqa"
        get_raw_dataset("mkqa-Japanese", str(tmp_path / "cache"), SEED, 0)


def test_missing_split_is_a_user_error(tmp_path):
    DatasetDict({"train": Dataset.from_list([hh_row(0)])}).save_to_disk(
        str(tmp_path / "Dahoas" / "rm-static")
    )
    adapter = get_raw_dataset(str(tmp_path / "Dahoas" / "rm-static"), "unused", SEED, 0)
    with pytest.raises(DschatError, match="'test'"):
        adapter.get_eval_data()


def test_first_registry_match_wins(tmp_path):
    path = tmp_path / "mkqa-Chinese" / "Dahoas" / "rm-static"
    DatasetDict({"train": Dataset.from_list([hh_row(0)])}).save_to_disk(str(path))
    assert type(get_raw_dataset(str(path), "unused", SEED, 0)) is rd.DahoasRmstaticDataset


def test_local_data_paths_are_checked_before_registry_names(tmp_path):
    """A local file whose path contains a registry name is read as a local file, not as that dataset."""
    folder = tmp_path / "Dahoas" / "rm-static"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(json.dumps({"prompt": "Hi?", "response": "Hello."}) + "\n")
    got = get_raw_dataset(str(folder / "train.jsonl"), str(tmp_path / "cache"), SEED, 0)
    assert isinstance(got, LocalFileDataset)
    with pytest.raises(DschatError, match="unknown dataset"):
        get_raw_dataset("other/name", "out", SEED, 0)
