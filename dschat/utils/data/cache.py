"""The tokenised-data cache: its key (upstream's fields plus what upstream forgot), a lock, safe loading."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import zipfile

from dschat.config import DataConfig
from dschat.utils.data.tokenized import TokenizedSamples

DATA_FORMAT_VERSION = 2  # 2: upstream-format text parsed with System: and quoted markers kept


def local_files_fingerprint(data_paths: list[str]) -> str:
    """Sizes and modification times of local data files, so edited files invalidate the cache."""
    entries = []
    for path in data_paths:
        if os.path.isfile(path):
            found = [path]
        elif os.path.isdir(path):
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files)
        else:
            continue
        for name in found:
            info = os.stat(name)
            entries.append(f"{os.path.abspath(name)}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def tokenizer_fingerprint(tokenizer) -> str:
    """Identity of the tokenizer's behaviour: its full backend definition, or vocab and specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    text += repr(tokenizer.all_special_tokens) + type(tokenizer).__name__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(data: DataConfig, tokenizer, end_of_conversation_token: str) -> str:
    """Upstream's key fields plus what upstream forgot: tokenizer identity, EOS text, template, files, version."""
    name = tokenizer.init_kwargs.get("name_or_path", tokenizer.name_or_path).replace("/", "_")
    weights = None if data.data_weights is None else list(data.data_weights)
    sources = list(data.data_path) + list(data.sft_only_data_path)
    key = (
        f"{'_'.join(data.data_path)}_split{data.data_split}_phase1_seed{data.seed}_tokenizer{name}"
        f"_seqlen{data.max_seq_len}_sft{'_'.join(data.sft_only_data_path)}"
        f"_eot{end_of_conversation_token}_template{data.prompt_template}_weights{weights}"
        f"_tok{tokenizer_fingerprint(tokenizer)}_files{local_files_fingerprint(sources)}"
        f"_format{DATA_FORMAT_VERSION}"
    ).replace("/", "_")
    if data.clean is not None:  # only then: keys of runs without --clean_data stay what they were
        key += f"_clean{data.clean.cache_key()}"
    return hashlib.sha256(key.encode()).hexdigest()


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive lock file, so writers on a shared filesystem take turns."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_cached(paths: list[str]):
    """Both cached splits, or None when either is missing or unreadable (a torn or foreign file)."""
    try:
        return [TokenizedSamples.load(path) for path in paths]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
