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
_ASCII_TOKEN = re.compile(r"\w+", re.ASCII)
# n-gram hash = sum of token hashes times powers of an odd base (mod 2**64), from prefix sums: any n costs the same.
_BASE = 0x9E3779B97F4A7C15
_BASE_INVERSE = pow(_BASE, -1, 2**64)
_MASK = 0xFFFFFFFFFFFFFFFF
# Token -> hash memo per process (vocabularies are Zipfian: most tokens repeat); cleared when it grows past this.
TOKEN_CACHE_SIZE = 500_000
_TOKEN_HASHES: dict[str, int] = {}
# Text that ftfy would return unchanged: ASCII without control characters other than tab and newline.
_NEEDS_FTFY = re.compile(r"[^\t\n\x20-\x7e]")


def repair_text(text: str) -> str:
    """Fix mojibake and broken unicode (ftfy), NFC, line ends, trailing spaces and invisible characters.

    Indentation and spaces inside lines are kept (code answers depend on them).
    """
    if _NEEDS_FTFY.search(text):
        import ftfy

        text = _ZERO_WIDTH.sub("", ftfy.fix_text(text, **_FTFY_OPTIONS))
    return _BLANK_LINES.sub("\n\n", _TRAILING_SPACE.sub("\n", text)).strip()


def normalise(text: str) -> str:
    """The form two texts must share to be exact duplicates: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def conversation_digest(messages: list[dict]) -> bytes:
    """A 16-byte digest of the whole normalised conversation, roles included."""
    joined = "\x1e".join(f"{m['role']}\x1f{normalise(m['content'])}" for m in messages)
    return hashlib.blake2b(joined.encode(), digest_size=16).digest()


def tokens(text: str) -> list[str]:
    """Word tokens of the normalised text (punctuation dropped; CJK characters one token each)."""
    if text.isascii():  # NFKC is the identity on ASCII and casefold is lower: the common case, fast
        return _ASCII_TOKEN.findall(text.lower())
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def token_hashes(words: list[str]) -> np.ndarray:
    """A stable 64-bit hash per token (the same in every process and run, unlike ``hash``)."""
    cache = _TOKEN_HASHES
    try:
        values = [cache[word] for word in words]
    except KeyError:
        if len(cache) > TOKEN_CACHE_SIZE:
            cache.clear()
        for word in words:
            if word not in cache:
                cache[word] = xxhash.xxh64_intdigest(word.encode())
        values = [cache[word] for word in words]
    return np.array(values, dtype=np.uint64)


def conversation_tokens(messages: list[dict]) -> tuple[list[str], np.ndarray]:
    """Tokens and token hashes of a conversation's user and assistant turns (system prompts are shared boilerplate)."""
    words = [w for m in messages if m["role"] != "system" for w in tokens(m["content"])]
    return words, token_hashes(words)


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """``base**k`` and ``base**-k`` mod 2**64 for k < length (cached, grown by doubling)."""
    global _POWERS
    if len(_POWERS[0]) < length:
        size = max(length, 2 * len(_POWERS[0]), 1024)
        _POWERS = tuple(
            np.cumprod(np.r_[1, np.full(size - 1, b, np.uint64)].astype(np.uint64))
            for b in (_BASE, _BASE_INVERSE)
        )
    return _POWERS[0][:length], _POWERS[1][:length]


_POWERS: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.uint64), np.zeros(0, np.uint64))


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """64-bit hashes of every window of ``n`` token hashes; a text shorter than ``n`` gives one hash of all of it."""
    n = min(n, len(hashes))
    if n == 0:
        return np.zeros(0, np.uint64)
    up, down = _powers(len(hashes))
    prefix = np.empty(len(hashes) + 1, np.uint64)
    prefix[0] = 0
    np.cumsum(hashes * up, out=prefix[1:])
    windows = (prefix[n:] - prefix[:-n]) * down[: len(hashes) - n + 1]  # wraps mod 2**64 on purpose
    return _finalise(windows ^ np.uint64(n))


def _finalise(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the linear mix over all 64 bits."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9 & _MASK)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB & _MASK)
    return values ^ (values >> np.uint64(31))


def preview(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters, for report examples."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
