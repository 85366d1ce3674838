"""The cleaning rules' settings: one dataclass, its flags, validation and a stable cache-key dict."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from dschat.errors import DschatError
from dschat.flags import str_to_bool
from dschat.utils.data.prompts import UPSTREAM

# Bump when a rule's behaviour changes, so caches keyed on cache_fields() are rebuilt.
CLEAN_VERSION = 1
TRUNCATED_CHOICES = ("drop", "keep")
# Fields main.py already owns (same names and meaning): read from its namespace, never added twice.
SHARED_FIELDS = ("max_seq_len", "prompt_template", "train_on_prompt")


@dataclass(frozen=True)
class CleanConfig:
    """Which rules run and their thresholds; the defaults are what ``python -m dschat.clean`` does."""

    repair: bool = True
    drop_malformed: bool = True
    min_answer_chars: int = 2
    truncated: str = "drop"
    drop_no_loss_tokens: bool = True
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_threshold: float = 0.8
    near_dup_ngram: int = 5
    near_dup_num_perm: int = 128
    decontaminate: bool = True
    decontaminate_ngram: int = 12
    decontaminate_against: tuple[str, ...] = ()
    scrub_pii: bool = False
    languages: tuple[str, ...] = ()
    # Shared with main.py (token-length rules; they only run when a tokenizer is given).
    max_seq_len: int = 512
    prompt_template: str = UPSTREAM
    train_on_prompt: bool = True
    num_proc: int = field(default=1, compare=False)  # how fast, not what: not part of the cache key

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> CleanConfig:
        """Build from parsed flags; fields the namespace lacks keep their defaults."""
        values = {}
        for f in dataclasses.fields(cls):
            if hasattr(args, f.name) and getattr(args, f.name) is not None:
                value = getattr(args, f.name)
                values[f.name] = tuple(value) if isinstance(value, list) else value
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Collect every bad setting and raise one DschatError listing them."""
        problems = []
        if not 0.0 < self.near_dup_threshold <= 1.0:
            problems.append(f"--near_dup_threshold {self.near_dup_threshold}: must be in (0, 1]")
        for name in ("near_dup_ngram", "decontaminate_ngram", "near_dup_num_perm", "num_proc", "max_seq_len"):
            if getattr(self, name) < 1:
                problems.append(f"--{name} {getattr(self, name)}: must be at least 1")
        if self.min_answer_chars < 0:
            problems.append(f"--min_answer_chars {self.min_answer_chars}: must be 0 (off) or more")
        if self.truncated not in TRUNCATED_CHOICES:
            problems.append(f"--truncated {self.truncated!r}: choose one of {', '.join(TRUNCATED_CHOICES)}")
        if problems:
            raise DschatError("bad cleaning settings: " + "; ".join(problems))

    def cache_fields(self) -> dict:
        """Every setting that changes the cleaned data, plus the rules' and libraries' versions (JSON-able)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        fields["decontaminate_against"] = [_file_identity(path) for path in self.decontaminate_against]
        fields["languages"] = sorted(self.languages)
        fields["clean_version"] = CLEAN_VERSION
        fields["libraries"] = library_versions(self)
        return dict(sorted(fields.items()))

    def cache_key(self) -> str:
        """A short stable hash of ``cache_fields()``."""
        text = json.dumps(self.cache_fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_identity(path: str) -> dict:
    """A benchmark file as a cache-key entry: path, size and mtime (so an edited file invalidates the cache)."""
    import os

    try:
        stat = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def library_versions(config: CleanConfig) -> dict[str, str]:
    """Versions of the libraries whose behaviour the enabled rules depend on."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["ftfy"] if config.repair else []
    names += ["datasketch"] if config.near_dedup else []
    names += ["py3langid"] if config.languages else []
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


_ONOFF = dict(type=str_to_bool, metavar="{true,false}")


def add_clean_args(parser: argparse.ArgumentParser) -> None:
    """The cleaning rules' flags in two groups (none exists in main.py, so main.py can add them as they are)."""
    _add_filter_args(parser.add_argument_group("cleaning: repairs and per-record filters"))
    _add_dedup_args(parser.add_argument_group("cleaning: duplicates and contamination"))


def _add_filter_args(group: argparse._ArgumentGroup) -> None:
    d, flag = CleanConfig(), group.add_argument
    flag(
        "--repair",
        default=d.repair,
        **_ONOFF,
        help="Fix mojibake and broken unicode (ftfy), NFC, line ends, trailing spaces, control and zero-width characters.",
    )
    flag(
        "--drop_malformed",
        default=d.drop_malformed,
        **_ONOFF,
        help="Drop records with an empty prompt, answer or turn, no assistant turn, or roles out of order.",
    )
    flag(
        "--min_answer_chars",
        type=int,
        default=d.min_answer_chars,
        help="Drop records with an assistant answer shorter than this many characters (0: off).",
    )
    flag(
        "--truncated",
        choices=TRUNCATED_CHOICES,
        default=d.truncated,
        help="Records longer than --max_seq_len tokens: drop them or keep them (training truncates). "
        "Needs --model_name_or_path (the tokenizer).",
    )
    flag(
        "--drop_no_loss_tokens",
        default=d.drop_no_loss_tokens,
        **_ONOFF,
        help="Drop records left with no loss-bearing token after truncation (main.py refuses them).",
    )
    flag(
        "--scrub_pii",
        action="store_true",
        help="Replace emails, IP addresses and phone numbers with <EMAIL>, <IP_ADDRESS>, <PHONE> (off by default).",
    )
    flag(
        "--languages",
        nargs="*",
        default=list(d.languages),
        metavar="CODE",
        help="Keep only records py3langid (offline) gives >= 0.1 probability for these ISO 639-1 codes together, "
        "e.g. en de (off by default).",
    )
    flag("--num_proc", type=int, default=d.num_proc, help="Worker processes for the per-record rules.")


def _add_dedup_args(group: argparse._ArgumentGroup) -> None:
    d, flag = CleanConfig(), group.add_argument
    flag(
        "--exact_dedup",
        default=d.exact_dedup,
        **_ONOFF,
        help="Drop exact duplicates of the whole conversation after NFKC, case folding and whitespace collapse.",
    )
    flag(
        "--near_dedup",
        default=d.near_dedup,
        **_ONOFF,
        help="Drop near-duplicates (MinHash LSH over word n-grams), keeping the first record of each cluster.",
    )
    flag(
        "--near_dup_threshold",
        type=float,
        default=d.near_dup_threshold,
        help="Estimated Jaccard similarity at or above which two records are near-duplicates.",
    )
    flag("--near_dup_ngram", type=int, default=d.near_dup_ngram, help="Words per near-duplicate shingle.")
    flag("--near_dup_num_perm", type=int, default=d.near_dup_num_perm, help="MinHash permutations.")
    flag(
        "--decontaminate",
        default=d.decontaminate,
        **_ONOFF,
        help="Drop train records sharing an n-gram with the eval split or --decontaminate_against files.",
    )
    flag(
        "--decontaminate_ngram",
        type=int,
        default=d.decontaminate_ngram,
        help="Words per contamination n-gram.",
    )
    flag(
        "--decontaminate_against",
        nargs="*",
        default=list(d.decontaminate_against),
        metavar="FILE",
        help="Benchmark files to decontaminate against: .txt (one item per line), .json/.jsonl/.parquet "
        "(every string field), or anything --data_path takes.",
    )
