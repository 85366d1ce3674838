"""Flag groups shared by main.py and prepare_data: upstream names and defaults, additions marked as ours."""

from __future__ import annotations

import argparse

from dschat.utils.data.prompts import PROMPT_TEMPLATES, UPSTREAM


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Upstream's data flags, plus dschat's --prompt_template, --data_weights and --reload_data."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data_path",
        nargs="*",
        default=["Dahoas/rm-static"],
        help="Datasets: upstream hub names (or local save_to_disk copies whose path contains the name), "
        "local/jsonfile, or (dschat) a local .json/.jsonl/.parquet file or a directory of them. Several are blended.",
    )
    group.add_argument(
        "--data_split",
        type=str,
        default="2,4,4",
        help="Comma-separated weights of the three training phases; phase 1 (SFT) uses the first part. "
        "10,0,0 gives all data to SFT.",
    )
    group.add_argument(
        "--sft_only_data_path",
        nargs="*",
        default=[],
        help="Datasets used only for SFT (split 10,0,0), appended to --data_path's and reshuffled.",
    )
    group.add_argument(
        "--data_output_path",
        type=str,
        default="/tmp/data_files/",
        help="Cache directory for split indices and tokenised data (node-local storage is fastest; "
        "dschat also makes shared storage safe).",
    )
    group.add_argument("--max_seq_len", type=int, default=512, help="Maximum sequence length in tokens.")
    group.add_argument("--seed", type=int, default=1234, help="Random seed (split, shuffles, model init).")
    group.add_argument(
        "--prompt_template",
        choices=PROMPT_TEMPLATES,
        default=UPSTREAM,
        help="(dschat) upstream: ' Human: ... Assistant: ...' text as upstream; chat_template: render "
        "conversations with the tokenizer's chat template.",
    )
    group.add_argument(
        "--data_weights",
        nargs="*",
        type=float,
        default=None,
        help="(dschat) one weight per --data_path entry: resample the train blend to these proportions "
        "(seeded). Default: upstream's plain concatenation.",
    )
    group.add_argument(
        "--train_on_prompt", type=str_to_bool, default=True, metavar="{true,false}",
        help="true (upstream): loss on every non-pad token, prompt included; false (dschat): loss on assistant "
        "answers only (every assistant turn of a multi-turn sample).",
    )  # fmt: skip
    group.add_argument(
        "--reload_data",
        action="store_true",
        help="(dschat) rebuild the tokenised cache even if it exists (upstream's reload=True).",
    )


TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def str_to_bool(text: str) -> bool:
    """Parse true/false flag values (``--train_on_prompt false``)."""
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    """The model path and the tokenizer flags that change the tokenised data."""
    group = parser.add_argument_group("model and tokenizer")
    group.add_argument(
        "--model_name_or_path",
        type=str,
        required=True,
        help="Path to a pretrained model directory or a model identifier from huggingface.co/models.",
    )
    group.add_argument(
        "--add_eot_token",
        action="store_true",
        help="Add --eot_token to the tokenizer as a special token (as upstream, it is not appended to samples).",
    )
    group.add_argument(
        "--eot_token", type=str, default="<|endoftext|>", help="The end-of-text special token."
    )
    group.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="(dschat) allow model/tokenizer code from the model directory or hub (off by default).",
    )
