"""Decontamination: an index of the eval split's (and benchmark files') word n-grams, checked per train record.

A train record is contaminated when the words of its user and assistant turns share a ``--decontaminate_ngram``
word n-gram with an indexed text, or contain a whole indexed prompt shorter than that (at least
``MIN_PROMPT_WORDS`` words: short questions are the usual benchmark item). System turns are neither indexed nor
checked: a shared system prompt is not a leak. The index is sorted arrays, so it ships to workers cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dschat.clean.text import conversation_tokens, ngram_hashes, token_hashes, tokens

MIN_PROMPT_WORDS = 4


@dataclass(frozen=True)
class Contamination:
    """The shared words and where the indexed text came from."""

    words: str
    source: str


@dataclass
class NgramIndex:
    """n-gram hashes of indexed texts with the text each came from; ``freeze`` before ``find``."""

    ngram: int
    sources: list[str] = field(default_factory=list)
    _parts: list[tuple[np.ndarray, int]] = field(default_factory=list)
    _lengths: set[int] = field(default_factory=set)
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    owners: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, text: str, source: str, whole_if_short: bool) -> None:
        """Index ``text``; a text under ``ngram`` words is indexed whole when ``whole_if_short`` (prompts)."""
        words = tokens(text)
        if len(words) >= self.ngram:
            size = self.ngram
        elif whole_if_short and len(words) >= MIN_PROMPT_WORDS:
            size = len(words)
        else:
            return
        self._lengths.add(size)
        self._parts.append((ngram_hashes(token_hashes(words), size), len(self.sources)))
        self.sources.append(source)

    def add_conversation(self, messages: list[dict], source: str) -> None:
        """Index a conversation's user turns (whole when short) and assistant turns."""
        for message in messages:
            if message["role"] != "system":
                self.add(message["content"], source, whole_if_short=message["role"] == "user")

    def freeze(self) -> NgramIndex:
        """Sort the hashes for lookup."""
        if self._parts:
            keys = np.concatenate([hashes for hashes, _ in self._parts])
            owners = np.concatenate([np.full(len(hashes), owner) for hashes, owner in self._parts])
            order = np.argsort(keys, kind="stable")
            self.keys, self.owners = keys[order], owners[order]
        self._parts = []
        return self

    def __len__(self) -> int:
        return len(self.keys)

    def find(
        self, messages: list[dict], tokenised: tuple[list[str], np.ndarray] | None = None
    ) -> Contamination | None:
        """The first indexed n-gram (or whole short prompt) in the user and assistant turns, if any.

        ``tokenised``: the conversation's ``conversation_tokens``, when already computed.
        """
        if not len(self.keys):
            return None
        words, hashes = tokenised or conversation_tokens(messages)
        for size in sorted(n for n in self._lengths if n <= len(words)):
            grams = ngram_hashes(hashes, size)
            positions = np.minimum(np.searchsorted(self.keys, grams), len(self.keys) - 1)
            hits = np.flatnonzero(self.keys[positions] == grams)
            if len(hits):
                start = int(hits[0])
                owner = int(self.owners[positions[start]])
                return Contamination(" ".join(words[start : start + size]), self.sources[owner])
        return None
