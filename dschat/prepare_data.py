"""Build phase-1 split indices and the tokenised cache ahead of training, then print the data report.

Takes main.py's data and tokenizer flags (same names, same defaults), so the training run that follows
finds the cache and reuses it. Run it on a CPU node before a GPU job:

    python -m dschat.prepare_data --model_name_or_path facebook/opt-1.3b \
        --data_path my_data.jsonl --data_split 10,0,0 --max_seq_len 512
"""

from __future__ import annotations

import argparse
import logging
import sys

from dschat.config import DataConfig, ModelConfig, section_from_args
from dschat.errors import run_cli
from dschat.flags import add_cleaning_args, add_data_args, add_tokenizer_args
from dschat.utils.data.data_utils import prepare_datasets
from dschat.utils.log import setup_logging
from dschat.utils.model.model_utils import load_hf_tokenizer

logger = logging.getLogger("dschat.prepare_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser)
    add_cleaning_args(parser)
    add_tokenizer_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    model, data = section_from_args(ModelConfig, args), section_from_args(DataConfig, args)
    tokenizer = load_hf_tokenizer(
        model.model_name_or_path, True, model.added_special_token, model.trust_remote_code
    )
    train, evaluation = prepare_datasets(data, tokenizer)
    logger.info(
        "phase-1 data ready: train_samples=%d eval_samples=%d cache_dir=%s",
        len(train),
        len(evaluation),
        data.data_output_path,
    )


def cli() -> None:
    """The installed ``dschat-prepare-data`` command: a user mistake is one line on stderr, exit status 2."""
    sys.exit(run_cli(main))


if __name__ == "__main__":
    cli()
