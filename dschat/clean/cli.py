"""``python -m dschat.clean``: clean any ``--data_path`` into ``train.jsonl`` + ``eval.jsonl`` and ``report/``.

    python -m dschat.clean --data_path data/demo --output_dir cleaned/
    python -m dschat.clean --data_path Dahoas/rm-static my.jsonl --output_dir cleaned/ \\
        --model_name_or_path facebook/opt-1.3b --max_seq_len 512 --decontaminate_against mmlu.jsonl

Train on the result with ``main.py --data_path cleaned/`` (the directory gives both splits).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time

from dschat.clean.config import CleanConfig, add_clean_args
from dschat.clean.output import EVAL_FILE, REPORT_DIR, TRAIN_FILE, AtomicJsonl, check_output_dir, temp_name
from dschat.clean.pipeline import FileSpool, clean_train_and_eval
from dschat.clean.sources import open_splits
from dschat.errors import DschatError, run_cli
from dschat.flags import str_to_bool
from dschat.utils.data.prompts import PROMPT_TEMPLATES, UPSTREAM

logger = logging.getLogger("dschat.clean")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dschat.clean",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    group = parser.add_argument_group("data (main.py's flags, same names and defaults)")
    group.add_argument(
        "--data_path",
        nargs="+",
        required=True,
        help="Datasets as main.py takes them: registry names, local copies, .json/.jsonl/.parquet files or directories.",
    )
    group.add_argument("--output_dir", required=True, help="Where train.jsonl, eval.jsonl and the report go.")
    group.add_argument(
        "--data_output_path",
        default="/tmp/data_files/",
        help="Where split-index files of sources without an eval split are cached (as main.py).",
    )
    group.add_argument("--seed", type=int, default=1234, help="Seed of the 90/10 eval carving (as main.py).")
    group.add_argument(
        "--model_name_or_path",
        default=None,
        help="Tokenizer for the token-length rules (--truncated, --drop_no_loss_tokens); without it they are skipped.",
    )
    group.add_argument(
        "--max_seq_len", type=int, default=512, help="Training's maximum sequence length in tokens."
    )
    group.add_argument(
        "--prompt_template",
        choices=PROMPT_TEMPLATES,
        default=UPSTREAM,
        help="How training renders conversations (token counts depend on it).",
    )
    group.add_argument(
        "--train_on_prompt",
        type=str_to_bool,
        default=True,
        metavar="{true,false}",
        help="As main.py: false counts only answer tokens as loss-bearing.",
    )
    group.add_argument(
        "--trust_remote_code", action="store_true", help="Allow tokenizer code from the model dir."
    )
    add_clean_args(parser)
    return parser.parse_args(argv)


def load_tokenizer(args: argparse.Namespace):
    """The training tokenizer, or None (the token-length rules are then skipped, and the report says so)."""
    if not args.model_name_or_path:
        logger.info("no --model_name_or_path: skipping the token-length rules (truncated, no_loss_tokens)")
        return None
    from dschat.utils.model.model_utils import load_hf_tokenizer

    return load_hf_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)


def _joined(sources):
    """All sources of one split as one stream of items, and their total count."""
    return itertools.chain.from_iterable(s.items() for s in sources), sum(len(s) for s in sources)


def clean_to_dir(args: argparse.Namespace, config: CleanConfig, tokenizer) -> tuple[object, dict[str, int]]:
    """Read, clean and write ``train.jsonl`` / ``eval.jsonl`` atomically; returns the report and line counts."""
    directory = check_output_dir(args.output_dir, args.data_path)
    trains, evals = open_splits(args.data_path, args.data_output_path, args.seed)
    writers = {"train": AtomicJsonl(directory / TRAIN_FILE), "eval": AtomicJsonl(directory / EVAL_FILE)}
    try:
        report, _, _ = clean_train_and_eval(
            _joined(trains),
            _joined(evals),
            config,
            tokenizer,
            lambda split: FileSpool(str(temp_name(directory / f"spool-{split}.jsonl"))),
            lambda index, where, messages: writers["train"].write(messages),
            lambda index, where, messages: writers["eval"].write(messages),
            args.data_output_path,
            args.seed,
        )
        if writers["train"].count == 0:
            raise DschatError(
                f"every training record of {args.data_path} was removed (see the counts above). Fix: check the "
                "data, or relax the rules that removed them (each has a flag; see --help)."
            )
    except BaseException:
        for writer in writers.values():
            writer.abort()
        for split in ("train", "eval"):  # a spool not replayed yet (the error came first)
            temp_name(directory / f"spool-{split}.jsonl").unlink(missing_ok=True)
        raise
    writers["train"].commit()
    if writers["eval"].count:
        writers["eval"].commit()
    else:
        writers["eval"].abort()
        (directory / EVAL_FILE).unlink(missing_ok=True)
        logger.warning(
            "no eval record left: %s has train.jsonl only, so main.py will carve its eval 90/10", directory
        )
    return report, {split: writer.count for split, writer in writers.items()}


def main(argv: list[str] | None = None) -> None:
    from dschat.utils.log import setup_logging

    setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # worker processes are forked after loading it
    args = parse_args(argv)
    config = CleanConfig.from_namespace(args)
    tokenizer = load_tokenizer(args)
    start = time.perf_counter()
    report, counts = clean_to_dir(args, config, tokenizer)
    report_dir = os.path.join(args.output_dir, REPORT_DIR)
    os.makedirs(report_dir, exist_ok=True)
    paths = report.write(report_dir)
    logger.info(
        "cleaned in %.1f s: %s", time.perf_counter() - start, ", ".join(f"{k}={v}" for k, v in counts.items())
    )
    print(report.table())  # the CLI's result, on stdout
    print(
        f"wrote {', '.join(str(p) for p in [*(os.path.join(args.output_dir, f) for f in (TRAIN_FILE, EVAL_FILE)), *paths])}"
    )


if __name__ == "__main__":
    sys.exit(run_cli(main))
