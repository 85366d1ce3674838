"""Clean SFT data before training: repair, malformed and length filters, dedup, near-dedup, decontamination.

Command line (any ``--data_path``; writes ``train.jsonl``, ``eval.jsonl`` and ``report/`` with
``clean_report.json``, ``clean_report.md`` and ``length_histogram.png``)::

    python -m dschat.clean --data_path data/demo --output_dir cleaned/

Library API (for an in-pipeline ``--clean_data``)::

    from dschat.clean import CleanConfig, add_clean_args, clean_conversations

    add_clean_args(parser)                     # the rule flags; none collides with main.py's flags
    config = CleanConfig.from_namespace(args)  # also reads main.py's --max_seq_len, --prompt_template,
                                               # --train_on_prompt; missing fields keep their defaults
    config.cache_fields()                      # stable JSON-able dict for the data cache key (settings,
                                               # rule version, library versions); config.cache_key(): its hash
    result = clean_conversations(train, eval, config, tokenizer=None)
    # train / eval: lists of conversations ([{"role": ..., "content": ...}, ...]; None = a skipped sample)
    result.train_keep, result.eval_keep        # kept input indices, ascending
    result.train, result.eval                  # their cleaned conversations, in the same order
    result.train_changed, result.eval_changed  # kept indices whose text a repair / the PII scrub changed
    result.report                              # CleanReport: .table(), .to_dict(), .write(directory)

``result.unchanged`` is True when nothing was removed or changed: the original samples can then be used as
they are, so clean data gives the same cache and the same losses.
``tokenizer`` (main.py's) enables the token-length rules. Rules are plain functions (``rules``, ``length``);
exact dedup, near-dedup (``near_dup``) and decontamination (``decontam``) are separate stages over compact
indexes (``pipeline``).
"""

from dschat.clean.api import CleanResult, clean_conversations
from dschat.clean.config import CleanConfig, add_clean_args
from dschat.clean.report import CleanReport

__all__ = ["CleanConfig", "CleanReport", "CleanResult", "add_clean_args", "clean_conversations"]
