"""The raw-dataset base class: upstream's method surface and its hub / local-copy loading."""

from __future__ import annotations

import logging
import os

from dschat.errors import DschatError
from dschat.utils.data import prompts

logger = logging.getLogger(__name__)


def load_hub_or_local(dataset_name: str):
    """Load ``dataset_name`` as upstream does: ``load_from_disk`` for an existing path, else ``load_dataset``.

    Failures a user can fix (no network, a dataset that needs a loading script) become DschatError.
    """
    import datasets

    if os.path.exists(dataset_name):
        try:
            return datasets.load_from_disk(dataset_name)
        except FileNotFoundError as err:
            raise DschatError(
                f"--data_path {dataset_name!r} exists but is not a dataset saved with "
                f"datasets.save_to_disk ({err}). Pass a .json/.jsonl/.parquet file or a directory of them, "
                "or a directory written by Dataset(Dict).save_to_disk."
            ) from None
    try:
        return datasets.load_dataset(dataset_name)
    except (OSError, ValueError, RuntimeError) as err:  # what datasets raises for a name it cannot load
        text = str(err)
        if "script" in text.lower():
            fix = (
                "current `datasets` no longer runs dataset loading scripts: convert it to parquet or json "
                "(one file per split: train.*, eval.* or test.*) and pass that file or directory as --data_path"
            )
        else:
            fix = (
                "the hub may be unreachable from this machine: download it elsewhere, save it with "
                "`datasets.load_dataset(name).save_to_disk('/path/<name>')` and pass that path (it must "
                "contain the dataset name, e.g. /data/Dahoas/rm-static), or pass local json/jsonl/parquet files"
            )
        raise DschatError(
            f"cannot load dataset {dataset_name!r}: {type(err).__name__}: {text[:300]}. Fix: {fix}"
        ) from err


class PromptRawDataset:
    """One raw data source with upstream's methods: splits, prompt, chosen, rejected and their joins.

    ``get_prompt_and_chosen`` returns the exact upstream training string (or None to skip a sample);
    ``get_conversation`` returns the same sample as chat messages, for chat templates and answer masks.
    """

    dataset_name = ""
    dataset_name_clean = ""

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str, load: bool = True):
        # local_rank is upstream's parameter; dschat takes the rank from the process group instead.
        self.output_path = output_path
        self.seed = seed
        self.raw_datasets = load_hub_or_local(dataset_name) if load else None

    def get_train_data(self):
        raise NotImplementedError

    def get_eval_data(self):
        raise NotImplementedError

    def get_prompt(self, sample) -> str | None:
        raise NotImplementedError

    def get_chosen(self, sample) -> str | None:
        raise NotImplementedError

    def get_rejected(self, sample) -> str | None:
        raise NotImplementedError

    def get_prompt_and_chosen(self, sample) -> str | None:
        raise NotImplementedError

    def get_prompt_and_rejected(self, sample) -> str | None:
        raise NotImplementedError

    def get_conversation(self, sample) -> list[dict] | None:
        """The sample as messages, parsed from its upstream-format text; None when it is skipped."""
        text = self.get_prompt_and_chosen(sample)
        return None if text is None else prompts.parse_upstream_dialogue(text)

    def warn_no_rejected(self) -> None:
        """Upstream prints a warning whenever a dataset without rejected answers is asked for one."""
        logger.warning("dataset %s has no rejected responses (only phase 2/3 need them)", self.dataset_name)
