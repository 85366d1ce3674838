"""Data report: what was read, dropped and truncated, token lengths, and one sample with its loss tokens."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

TRUNCATION_WARN_FRACTION = 0.05
PERCENTILES = (50, 90, 99, 100)
LOSS_OPEN, LOSS_CLOSE = "[[", "]]"


@dataclass
class SplitStats:
    """Counts for one dataset's train or eval split."""

    dataset: str
    split: str
    records: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    length_percentiles: dict[str, int] = field(default_factory=dict)

    def record_drops(self, reasons: Counter) -> None:
        self.dropped = dict(sorted(reasons.items()))

    def record_lengths(self, lengths: np.ndarray) -> None:
        if len(lengths):
            self.length_percentiles = {f"p{p}": int(np.percentile(lengths, p)) for p in PERCENTILES}

    @property
    def truncated_fraction(self) -> float:
        return self.truncated / self.kept if self.kept else 0.0


def stats_to_dicts(stats: list[SplitStats]) -> list[dict]:
    return [asdict(s) for s in stats]


def stats_from_dicts(rows: list[dict]) -> list[SplitStats]:
    return [SplitStats(**row) for row in rows]


def mark_loss_tokens(tokenizer, input_ids: np.ndarray, trained: np.ndarray) -> str:
    """Decode a sample with the loss-bearing tokens wrapped in ``[[ ]]``."""
    pieces, run, run_trained = [], [], None
    for token, is_trained in zip(input_ids.tolist(), trained.tolist()):
        if run and is_trained != run_trained:
            pieces.append((run, run_trained))
            run = []
        run.append(token)
        run_trained = is_trained
    if run:
        pieces.append((run, run_trained))
    out = []
    for tokens, is_trained in pieces:
        text = tokenizer.decode(tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        out.append(f"{LOSS_OPEN}{text}{LOSS_CLOSE}" if is_trained else text)
    return "".join(out)


def log_report(stats: list[SplitStats], max_seq_len: int, sample_text: str | None, from_cache: bool) -> None:
    """Log the data report (rank 0 calls this); warn loudly when many answers lose their end."""
    source = "cache" if from_cache else "fresh build"
    logger.info("data report (%s, max_seq_len=%d):", source, max_seq_len)
    for s in stats:
        dropped = ", ".join(f"{reason}={n}" for reason, n in s.dropped.items()) or "none"
        lengths = " ".join(f"{k}={v}" for k, v in s.length_percentiles.items()) or "n/a"
        logger.info(
            "  dataset=%s split=%s records=%d kept=%d dropped=%d (%s) truncated=%d (%.1f%%) tokens: %s",
            s.dataset,
            s.split,
            s.records,
            s.kept,
            sum(s.dropped.values()),
            dropped,
            s.truncated,
            100 * s.truncated_fraction,
            lengths,
        )
        if s.truncated_fraction > TRUNCATION_WARN_FRACTION:
            logger.warning(
                "!!! %.1f%% of %s/%s samples are longer than --max_seq_len %d: their answers lose the end and "
                "the end-of-text token, so the model may not learn to stop. Raise --max_seq_len or shorten the data.",
                100 * s.truncated_fraction,
                s.dataset,
                s.split,
                max_seq_len,
            )
    if sample_text is not None:
        logger.info(
            "first training sample, loss-bearing tokens in %s %s:\n%s", LOSS_OPEN, LOSS_CLOSE, sample_text
        )
