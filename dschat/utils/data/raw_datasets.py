"""Upstream's 16 raw-dataset adapters (one small class per source) and the ``--data_path`` dispatch.

Every adapter returns upstream's exact training text. Single-turn question/answer text is built from
``prompts.upstream_prompt`` + ``prompts.upstream_answer`` (= ``upstream_prompt_and_answer``) by
``_QuestionAnswer``; hh-rlhf style text is joined as stored. ``eval_split = None`` marks the adapters that
carve their only (train) split 90/10, seeded and cached like ``--data_split`` (split name ``train_eval``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from dschat.errors import DschatError
from dschat.utils.data import local_files, prompts
from dschat.utils.data.base import PromptRawDataset, load_hub_or_local
from dschat.utils.data.splits import carve_train_eval

logger = logging.getLogger(__name__)

JSONFILE = "local/jsonfile"
MKQA = "mkqa"

# webgpt answers cite sources as "[1]" or "(Smith, 2003)": upstream drops them with the spaced form first.
_SPACED_CITATION = re.compile(r" [\(\[].*?[\)\]]")
_CITATION = re.compile(r"[\(\[].*?[\)\]]")
# sharegpt prompts say "USER:" / "ASSISTANT:"; upstream renames the roles to its own markers.
_SHAREGPT_ROLES = (("USER", prompts.HUMAN.rstrip(":")), ("ASSISTANT", prompts.ASSISTANT.rstrip(":")))


def _spaced(text: str | None) -> str | None:
    return None if text is None else prompts.upstream_answer(text)


def _concat(prompt: str | None, answer: str | None) -> str | None:
    return None if prompt is None or answer is None else prompt + answer


class _Adapter(PromptRawDataset):
    """Train/eval splits (named, or carved 90/10) and joins: prompt + answer, None (skip) if either is None."""

    eval_split: str | None = "test"

    def _split(self, name: str):
        splits = list(self.raw_datasets.keys()) if hasattr(self.raw_datasets, "keys") else []
        if name not in splits:
            raise DschatError(
                f"dataset {self.dataset_name!r} has splits {splits}, but its adapter reads split {name!r}. "
                f"Save a DatasetDict with the splits of the hub version (train and {self.eval_split or 'train'})."
            )
        return self.raw_datasets[name]

    def _carve(self, part: int):
        return carve_train_eval(
            self.output_path, self.dataset_name_clean, self.seed, self._split("train"), part
        )

    def get_train_data(self):
        return self._carve(0) if self.eval_split is None else self._split("train")

    def get_eval_data(self):
        return self._carve(1) if self.eval_split is None else self._split(self.eval_split)

    def get_prompt_and_chosen(self, sample) -> str | None:
        return _concat(self.get_prompt(sample), self.get_chosen(sample))

    def get_prompt_and_rejected(self, sample) -> str | None:
        return _concat(self.get_prompt(sample), self.get_rejected(sample))


class _StoredDialogue(_Adapter):
    """hh-rlhf style rows whose ``prompt`` already holds the dialogue: texts are joined as stored."""

    def get_prompt(self, sample) -> str | None:
        return sample["prompt"]

    def get_chosen(self, sample) -> str | None:
        return sample["chosen"]

    def get_rejected(self, sample) -> str | None:
        return sample["rejected"]


class _QuestionAnswer(_Adapter):
    """Upstream's single-turn text from ``question``/``answer`` (see ``prompts``); a None field skips the sample."""

    question_field = ""
    answer_field = ""
    rejected_field = ""
    has_rejected = False

    def question(self, sample) -> str | None:
        return sample[self.question_field]

    def answer(self, sample) -> str | None:
        return sample[self.answer_field]

    def rejected_answer(self, sample) -> str | None:
        return sample[self.rejected_field]

    def get_prompt(self, sample) -> str | None:
        question = self.question(sample)
        return None if question is None else prompts.upstream_prompt(question)

    def get_chosen(self, sample) -> str | None:
        return _spaced(self.answer(sample))

    def get_rejected(self, sample) -> str | None:
        if not self.has_rejected:
            self.warn_no_rejected()
            return None
        return _spaced(self.rejected_answer(sample))


class DahoasRmstaticDataset(_StoredDialogue):
    dataset_name = "Dahoas/rm-static"
    dataset_name_clean = "Dahoas_rm_static"


class DahoasFullhhrlhfDataset(_StoredDialogue):
    dataset_name = "Dahoas/full-hh-rlhf"
    dataset_name_clean = "Dahoas_full_hh_rlhf"


class DahoasSyntheticinstructgptjpairwiseDataset(_QuestionAnswer):
    dataset_name = "Dahoas/synthetic-instruct-gptj-pairwise"
    dataset_name_clean = "Dahoas_synthetic_instruct_gptj_pairwise"
    eval_split = None
    question_field, answer_field, rejected_field = "prompt", "chosen", "rejected"
    has_rejected = True


class YitingxieRlhfrewarddatasetsDataset(_StoredDialogue):
    """``prompt`` lacks the final assistant marker, ``chosen``/``rejected`` start with it; joins use raw fields."""

    dataset_name = "yitingxie/rlhf-reward-datasets"
    dataset_name_clean = "yitingxie_rlhf_reward_datasets"

    def get_prompt(self, sample) -> str | None:
        return sample["prompt"] + prompts.ASSISTANT

    def get_chosen(self, sample) -> str | None:
        return sample["chosen"].split(prompts.ASSISTANT)[-1]

    def get_rejected(self, sample) -> str | None:
        return sample["rejected"].split(prompts.ASSISTANT)[-1]

    def get_prompt_and_chosen(self, sample) -> str | None:
        return sample["prompt"] + sample["chosen"]

    def get_prompt_and_rejected(self, sample) -> str | None:
        return sample["prompt"] + sample["rejected"]


class OpenaiWebgptcomparisonsDataset(_QuestionAnswer):
    """Chosen = the higher-scored answer (answer_0 on a tie), citations removed."""

    dataset_name = "openai/webgpt_comparisons"
    dataset_name_clean = "openai_webgpt_comparisons"
    eval_split = None
    has_rejected = True

    def _answer(self, sample, best: bool) -> str:
        first_wins = float(sample["score_0"]) >= float(sample["score_1"])
        answer = sample["answer_0"] if first_wins == best else sample["answer_1"]
        return _CITATION.sub("", _SPACED_CITATION.sub("", answer))

    def question(self, sample) -> str | None:
        return sample["question"]["full_text"]

    def answer(self, sample) -> str | None:
        return self._answer(sample, best=True)

    def rejected_answer(self, sample) -> str | None:
        return self._answer(sample, best=False)


class StanfordnlpSHPDataset(_QuestionAnswer):
    """``labels == 1`` means reference A was preferred."""

    dataset_name = "stanfordnlp/SHP"
    dataset_name_clean = "stanfordnlp_SHP"
    eval_split = "validation"
    question_field = "history"
    has_rejected = True

    def answer(self, sample) -> str | None:
        return sample["human_ref_A"] if int(sample["labels"]) == 1 else sample["human_ref_B"]

    def rejected_answer(self, sample) -> str | None:
        return sample["human_ref_B"] if int(sample["labels"]) == 1 else sample["human_ref_A"]


class PvduySharegptalpacaoavicunaformatDataset(_Adapter):
    """Vicuna-format prompts with the roles renamed; empty or missing prompt/label skips the sample."""

    dataset_name = "pvduy/sharegpt_alpaca_oa_vicuna_format"
    dataset_name_clean = "pvduy_sharegpt_alpaca_oa_vicuna_format"

    def get_prompt(self, sample) -> str | None:
        prompt = sample["prompt"]
        if not prompt:
            return None
        for old, new in _SHAREGPT_ROLES:
            prompt = prompt.replace(old, new)
        return prompt

    def get_chosen(self, sample) -> str | None:
        return _spaced(sample["label"] or None)

    def get_rejected(self, sample) -> str | None:
        self.warn_no_rejected()
        return None


class Wangrui6ZhihuKOLDataset(_QuestionAnswer):
    dataset_name = "wangrui6/Zhihu-KOL"
    dataset_name_clean = "wangrui6_Zhihu_KOL"
    eval_split = None
    question_field, answer_field = "INSTRUCTION", "RESPONSE"


class _Miracl(_QuestionAnswer):
    """Query -> first positive passage; rejected = first negative passage (None when there is none)."""

    eval_split = "dev"
    question_field = "query"
    has_rejected = True

    def answer(self, sample) -> str | None:
        passages = sample["positive_passages"]
        return passages[0]["text"] if passages else None

    def rejected_answer(self, sample) -> str | None:
        passages = sample["negative_passages"]
        return passages[0]["text"] if passages else None


class CohereMiraclzhqueries2212Dataset(_Miracl):
    dataset_name = "Cohere/miracl-zh-queries-22-12"
    dataset_name_clean = "Cohere_miracl_zh_queries_22_12"


class HelloSimpleAIHC3ChineseDataset(_QuestionAnswer):
    """Chosen = the first human answer."""

    dataset_name = "Hello-SimpleAI/HC3-Chinese"
    dataset_name_clean = "Hello_SimpleAI_HC3_Chinese"
    eval_split = None
    question_field = "question"

    def answer(self, sample) -> str | None:
        answers = sample["human_answers"]
        return answers[0] if answers else None


class _Mkqa(_QuestionAnswer):
    """One language of HF ``mkqa`` (a local copy is used when the given name is an existing path)."""

    dataset_name = MKQA
    dataset_name_clean = MKQA
    eval_split = None
    language = ""

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str):
        super().__init__(output_path, seed, local_rank, dataset_name, load=False)
        self.raw_datasets = load_hub_or_local(dataset_name if os.path.exists(dataset_name) else MKQA)

    def question(self, sample) -> str | None:
        return sample["queries"][self.language]

    def answer(self, sample) -> str | None:
        answers = sample["answers"][self.language]
        return answers[0]["text"] if answers else None


class MkqaChineseDataset(_Mkqa):
    language = "zh_cn"


class MkqaJapaneseDataset(_Mkqa):
    language = "ja"


class CohereMiracljaqueries2212Dataset(_Miracl):
    dataset_name = "Cohere/miracl-ja-queries-22-12"
    dataset_name_clean = "Cohere_miracl_ja_queries_22_12"


class LmqgQgjaquadDataset(_QuestionAnswer):
    """Question -> the sentence that answers it."""

    dataset_name = "lmqg/qg_jaquad"
    dataset_name_clean = "lmqg_qg_jaquad"
    eval_split = "validation"
    question_field, answer_field = "question", "sentence"


class LmqgQagjaquadDataset(_QuestionAnswer):
    """First question -> the whole paragraph."""

    dataset_name = "lmqg/qag_jaquad"
    dataset_name_clean = "lmqg_qag_jaquad"
    eval_split = "validation"
    answer_field = "paragraph"

    def question(self, sample) -> str | None:
        return sample["questions"][0]


def jsonfile_root() -> str:
    """Where ``local/jsonfile`` looks for ``data/{train,eval}.json``: three directories above this package."""
    return os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, os.pardir))


class LocalJsonFileDataset(_Adapter):
    """``<root>/data/train.json`` and ``eval.json`` (JSON list or JSON lines) with prompt/chosen/rejected."""

    dataset_name = JSONFILE
    dataset_name_clean = "jsonfile"

    eval_split = "eval"

    def __init__(
        self,
        output_path: str,
        seed: int,
        local_rank: int,
        dataset_name: str = JSONFILE,
        root: str | None = None,
    ):
        super().__init__(output_path, seed, local_rank, dataset_name, load=False)
        data_dir = os.path.join(jsonfile_root() if root is None else os.fspath(root), "data")
        files = {"train": os.path.join(data_dir, "train.json"), "eval": os.path.join(data_dir, "eval.json")}
        if not all(os.path.isfile(path) for path in files.values()):
            raise DschatError(
                f"--data_path {JSONFILE} needs both {files['train']} and {files['eval']}. Create them "
                '(a JSON list of {"prompt": ..., "chosen": ..., "rejected": ...} objects, or JSON lines), '
                "or pass your own .json/.jsonl/.parquet file or directory as --data_path instead."
            )
        import datasets

        try:
            self.raw_datasets = datasets.load_dataset("json", data_files=files)
        except datasets.exceptions.DatasetGenerationError as err:
            raise _jsonfile_error(files, err) from err

    def get_prompt(self, sample) -> str | None:
        return _spaced(sample["prompt"])

    def get_chosen(self, sample) -> str | None:
        return _spaced(sample["chosen"])

    def get_rejected(self, sample) -> str | None:
        return _spaced(sample.get("rejected"))


def _jsonfile_error(files: dict[str, str], err: Exception) -> DschatError:
    """Why datasets could not read local/jsonfile's files, located by dschat's JSON reader (file and line)."""
    for path in files.values():
        local_files.read_records(
            Path(path)
        )  # raises the DschatError naming the file and line, if it is the JSON
    cause = err.__cause__ or err.__context__ or err
    return DschatError(
        f"--data_path {JSONFILE}: datasets cannot read {files['train']} and {files['eval']} ({cause}). Fix: make "
        'each a JSON list of {"prompt", "chosen", "rejected"} objects, or JSON lines of them.'
    )


# Upstream's dispatch: the first registry name CONTAINED in --data_path wins (so local copies such as
# /data/Dahoas/rm-static match), in this order.
_REGISTRY: tuple[tuple[str, type[PromptRawDataset]], ...] = (
    ("Dahoas/rm-static", DahoasRmstaticDataset),
    ("Dahoas/full-hh-rlhf", DahoasFullhhrlhfDataset),
    ("Dahoas/synthetic-instruct-gptj-pairwise", DahoasSyntheticinstructgptjpairwiseDataset),
    ("yitingxie/rlhf-reward-datasets", YitingxieRlhfrewarddatasetsDataset),
    ("openai/webgpt_comparisons", OpenaiWebgptcomparisonsDataset),
    ("stanfordnlp/SHP", StanfordnlpSHPDataset),
    ("pvduy/sharegpt_alpaca_oa_vicuna_format", PvduySharegptalpacaoavicunaformatDataset),
    ("wangrui6/Zhihu-KOL", Wangrui6ZhihuKOLDataset),
    ("Cohere/miracl-zh-queries-22-12", CohereMiraclzhqueries2212Dataset),
    ("Hello-SimpleAI/HC3-Chinese", HelloSimpleAIHC3ChineseDataset),
    ("mkqa-Chinese", MkqaChineseDataset),
    ("mkqa-Japanese", MkqaJapaneseDataset),
    ("Cohere/miracl-ja-queries-22-12", CohereMiracljaqueries2212Dataset),
    ("lmqg/qg_jaquad", LmqgQgjaquadDataset),
    ("lmqg/qag_jaquad", LmqgQagjaquadDataset),
    (JSONFILE, LocalJsonFileDataset),
)
KNOWN_DATASETS: tuple[str, ...] = tuple(name for name, _ in _REGISTRY)


DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet")


def get_raw_dataset(dataset_name: str, output_path: str, seed: int, local_rank: int) -> PromptRawDataset:
    """The adapter for one ``--data_path`` entry: local data files first, then upstream's substring dispatch."""
    if local_files.is_local_data_path(dataset_name):
        return local_files.LocalFileDataset(output_path, seed, local_rank, dataset_name)
    for match, adapter in _REGISTRY:
        if match in dataset_name:
            logger.debug("--data_path %s -> %s", dataset_name, adapter.__name__)
            return adapter(output_path, seed, local_rank, dataset_name)
    if dataset_name.lower().endswith(DATA_FILE_SUFFIXES) or dataset_name.startswith(("/", "./", "../", "~")):
        raise DschatError(
            f"--data_path {dataset_name!r} does not exist: check the path (relative paths start from the current "
            f"directory, {os.getcwd()!r})"
        )
    raise DschatError(
        f"unknown dataset {dataset_name!r}: known names are {', '.join(KNOWN_DATASETS)} (a path containing "
        "one of them is loaded with datasets.load_from_disk); or pass a local .json/.jsonl/.parquet file or directory"
    )
