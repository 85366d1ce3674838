"""Text primitives the rules share: unicode repair, the normalised form for dedup, word tokens and n-gram hashes."""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import xxhash

# ftfy's fixes that repair damage, without its "beautifying" ones: curly quotes, ligatures, full-width
# characters (CJK punctuation is full-width on purpose) and HTML entities (code and HTML answers use them).
_FTFY_OPTIONS = dict(
    unescape_html=False,
    uncurl_quotes=False,
    fix_latin_ligatures=False,
    fix_character_width=False,
    normalization="NFC",
    explain=False,
)
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")  # invisible; BOMs pasted mid-text
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")
# Chinese and Japanese scripts have no spaces between words: each character is a token.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")
# Odd 64-bit multipliers that mix a window of token hashes into one n-gram hash (a random linear hash).
_MULTIPLIERS = np.random.RandomState(12).randint(1, 2**62, size=64, dtype=np.int64).astype(np.uint64) * 2 + 1
_MASK = 0xFFFFFFFFFFFFFFFF


def repair_text(text: str) -> str:
    """Fix mojibake and broken unicode (ftfy), NFC, line ends, trailing spaces and invisible characters.

    Indentation and spaces inside lines are kept (code answers depend on them).
    """
    import ftfy

    fixed = ftfy.fix_text(text, **_FTFY_OPTIONS)
    fixed = _ZERO_WIDTH.sub("", fixed)
    fixed = _TRAILING_SPACE.sub("\n", fixed)
    return _BLANK_LINES.sub("\n\n", fixed).strip()


def normalise(text: str) -> str:
    """The form two texts must share to be exact duplicates: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def conversation_digest(messages: list[dict]) -> bytes:
    """A 16-byte digest of the whole normalised conversation, roles included."""
    joined = "\x1e".join(f"{m['role']}\x1f{normalise(m['content'])}" for m in messages)
    return hashlib.blake2b(joined.encode(), digest_size=16).digest()


def tokens(text: str) -> list[str]:
    """Word tokens of the normalised text (punctuation dropped; CJK characters one token each)."""
    return _TOKEN.findall(normalise(text))


def token_hashes(words: list[str]) -> np.ndarray:
    """A stable 64-bit hash per token (the same in every process, unlike ``hash``)."""
    return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every window of ``n`` token hashes; a text shorter than ``n`` gives one hash of all of it."""
    n = min(n, len(hashes))
    if n == 0:
        return np.zeros(0, np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(hashes, n)
    mixed = (windows * _MULTIPLIERS[:n]).sum(axis=1, dtype=np.uint64)  # wraps mod 2**64 on purpose
    return _finalise(mixed ^ np.uint64(n))


def _finalise(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the linear mix over all 64 bits."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9 & _MASK)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB & _MASK)
    return values ^ (values >> np.uint64(31))


def preview(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, for report examples."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
