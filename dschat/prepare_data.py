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

from dschat.errors import run_cli
from dschat.utils.cli_args import add_data_args, add_tokenizer_args
from dschat.utils.data.data_utils import create_phase1_datasets
from dschat.utils.log import setup_logging
from dschat.utils.model.model_utils import load_hf_tokenizer

logger = logging.getLogger("dschat.prepare_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser)
    add_tokenizer_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    args = parse_args(argv)
    tokenizer = load_hf_tokenizer(
        args.model_name_or_path,
        fast_tokenizer=True,
        add_special_tokens=args.eot_token if args.add_eot_token else None,
        trust_remote_code=args.trust_remote_code,
    )
    train, evaluation = create_phase1_datasets(args, tokenizer)
    logger.info(
        "phase-1 data ready: train_samples=%d eval_samples=%d cache_dir=%s",
        len(train),
        len(evaluation),
        args.data_output_path,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
