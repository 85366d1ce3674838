"""The per-record stage: every record-local rule over a chunk of records, run in a worker process.

A chunk's result carries each record's fate (kept with its repaired conversation, or dropped by which rule and
why), the features the global stages need (exact-duplicate digest, MinHash signature) and per-rule timings.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from dschat.clean import rules
from dschat.clean.config import CleanConfig
from dschat.clean.decontam import NgramIndex
from dschat.clean.length import TokenLengths
from dschat.clean.near_dup import Signer
from dschat.clean.sources import Item
from dschat.clean.text import conversation_digest, conversation_tokens


def conversation_text(messages: list[dict]) -> str:
    """A conversation as one readable string (for examples and lengths)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


@dataclass
class Outcome:
    """One record after the per-record rules."""

    where: str
    messages: list[dict] | None
    rule: str | None = None  # the rule that dropped it; None: kept so far
    why: str = ""
    text: str = ""  # the dropped record's text, for the report
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # (rule, before, after)
    chars_before: int = 0
    digest: bytes | None = None


@dataclass
class ChunkResult:
    """Outcomes in input order, signatures of the kept ones (same order), seconds and counts per rule."""

    outcomes: list[Outcome]
    signatures: np.ndarray | None
    seconds: dict[str, float]
    checked: dict[str, int]


class RecordStage:
    """The record-local rules of one configuration (plus the tokenizer and eval index they need)."""

    def __init__(self, config: CleanConfig, tokenizer=None, index: NgramIndex | None = None):
        self.config = config
        self.lengths = None
        if tokenizer is not None:
            self.lengths = TokenLengths(
                tokenizer, config.max_seq_len, config.prompt_template, config.train_on_prompt
            )
        self.index = index if config.decontaminate else None
        self.signer = Signer(config.near_dup_ngram, config.near_dup_num_perm) if config.near_dedup else None
        self.seconds: dict[str, float] = defaultdict(float)
        self.checked: dict[str, int] = defaultdict(int)

    def run(self, items: list[Item]) -> ChunkResult:
        """Apply every record-local rule to a chunk of records."""
        self.seconds, self.checked = defaultdict(float), defaultdict(int)
        outcomes = [self._one(where, messages, skipped) for where, messages, skipped in items]
        alive = [o for o in outcomes if o.rule is None]
        if self.lengths is not None:
            self._timed("truncated", len(alive), self._token_rules, alive)
            alive = [o for o in alive if o.rule is None]
        tokenised = None
        if self.index is not None or self.signer is not None:  # shared by both; timed with near_dup
            tokenised = self._timed("near_dup", 0, lambda: [conversation_tokens(o.messages) for o in alive])
        if self.index is not None:
            for outcome, words in zip(alive, tokenised):
                self._timed("contaminated", 1, self._contamination, outcome, words)
            tokenised = [words for outcome, words in zip(alive, tokenised) if outcome.rule is None]
            alive = [o for o in alive if o.rule is None]
        if self.config.exact_dedup or self.config.decontaminate:
            for outcome in alive:
                outcome.digest = self._timed("exact_dup", 1, conversation_digest, outcome.messages)
        signatures = None
        if self.signer is not None:
            signatures = self._timed(
                "near_dup", len(alive), self.signer.sign, [o.messages for o in alive], tokenised
            )
        return ChunkResult(outcomes, signatures, dict(self.seconds), dict(self.checked))

    def _timed(self, rule: str, count: int, function, *args):
        start = time.perf_counter()
        result = function(*args)
        self.seconds[rule] += time.perf_counter() - start
        self.checked[rule] += count
        return result

    def _one(self, where: str, messages: list[dict] | None, skipped: str | None) -> Outcome:
        """The rules that look at one record alone, in order; the first that drops it wins."""
        if messages is None:
            return Outcome(where, None, "skipped", skipped or "", "")
        outcome = Outcome(where, messages, chars_before=sum(len(m["content"]) for m in messages))
        config = self.config
        if config.repair:
            self._transform(outcome, "repair", rules.repair)
        if config.scrub_pii:
            self._transform(outcome, "pii", rules.scrub_pii)
        checks = []
        if config.drop_malformed:
            checks.append(("malformed", rules.malformed_reason))
        if config.min_answer_chars:
            checks.append(("short_answer", lambda m: rules.short_answer_reason(m, config.min_answer_chars)))
        if config.languages:
            checks.append(("language", lambda m: rules.language_reason(m, config.languages)))
        for rule, check in checks:
            why = self._timed(rule, 1, check, outcome.messages)
            if why is not None:
                return self._drop(outcome, rule, why)
        return outcome

    def _transform(self, outcome: Outcome, rule: str, function) -> None:
        new = self._timed(rule, 1, function, outcome.messages)
        if new is not outcome.messages:
            outcome.changes.append((rule, conversation_text(outcome.messages), conversation_text(new)))
            outcome.messages = new

    @staticmethod
    def _drop(outcome: Outcome, rule: str, why: str) -> Outcome:
        outcome.rule, outcome.why, outcome.text = rule, why, conversation_text(outcome.messages)
        return outcome

    def _token_rules(self, alive: list[Outcome]) -> None:
        counts = self.lengths.count([o.messages for o in alive])
        limit = self.config.max_seq_len
        for outcome, count in zip(alive, counts):
            if self.config.drop_no_loss_tokens and count.loss_tokens == 0:
                what = "tokens" if self.config.train_on_prompt else "answer tokens"
                self._drop(
                    outcome,
                    "no_loss_tokens",
                    f"no loss-bearing {what} in the first {limit} of {count.tokens} tokens",
                )
            elif self.config.truncated == "drop" and count.tokens > limit:
                self._drop(outcome, "truncated", f"{count.tokens} tokens > --max_seq_len {limit}")

    def _contamination(self, outcome: Outcome, tokenised: list) -> None:
        hit = self.index.find(outcome.messages, tokenised)
        if hit is not None:
            self._drop(outcome, "contaminated", f"shares {hit.words!r} with {hit.source}")


# The stage a worker process uses: set once per process (by fork or the pool initializer), not per chunk.
_WORKER_STAGE: RecordStage | None = None


def init_worker(stage: RecordStage) -> None:
    global _WORKER_STAGE
    _WORKER_STAGE = stage


def run_in_worker(items: list[Item]) -> ChunkResult:
    return _WORKER_STAGE.run(items)
