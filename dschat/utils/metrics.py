"""What a run reports per step: metrics.jsonl rows (rank 0), eval lines and the throughput line."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import IO

from dschat.run_dir import EVAL_METRICS_NAME, METRICS_NAME
from dschat.utils import atomic, dist, perf

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Per-step JSON lines (``metrics.jsonl``) and per-evaluation lines (``eval.jsonl``) in the output dir, on
    rank 0, so runs can be plotted and compared.

    A resumed run keeps the rows up to its checkpoint (``keep_steps``) and continues the files.
    """

    def __init__(self, output_dir: str | None, keep_steps: int | None = None):
        self.handles: dict[str, IO] = {}
        if output_dir and dist.get_rank() == 0:
            os.makedirs(output_dir, exist_ok=True)
            for name in (METRICS_NAME, EVAL_METRICS_NAME):
                self.handles[name] = _continue(os.path.join(output_dir, name), keep_steps)

    def _write(self, name: str, row: dict) -> None:
        if name in self.handles:
            with atomic.disk_space_guard(self.handles[name].name, "the metrics file"):
                self.handles[name].write(json.dumps(row) + "\n")
                self.handles[name].flush()

    def write(self, **row) -> None:
        self._write(METRICS_NAME, row)

    def write_eval(self, result: EvalResult | None, **where) -> None:
        if result is not None:
            self._write(EVAL_METRICS_NAME, {**where, **asdict(result)})

    def close(self) -> None:
        for handle in self.handles.values():
            with atomic.disk_space_guard(handle.name, "the metrics file"):  # closing flushes the last rows
                handle.close()


def _continue(path: str, keep_steps: int | None) -> IO:
    """Open a metrics file for writing, keeping its rows up to ``keep_steps`` (a resumed run) or none."""
    kept = []
    if keep_steps is not None and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as old:
            kept = [line for line in old if _step(line) is not None and _step(line) <= keep_steps]
    atomic.write_text(path, "".join(kept))  # a kill here keeps the old rows, not an empty file
    return open(path, "a", encoding="utf-8")


def _step(line: str) -> int | None:
    """A row's step, None for a torn or foreign line (a kill or a full disk mid-write leaves one at the end)."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError, RecursionError):
        return None
    return step if isinstance(step, int) else None


@dataclass
class EvalResult:
    """Upstream's perplexity (mean of batch means, rank-averaged) and the token-weighted one beside it."""

    perplexity: float
    loss: float
    token_perplexity: float
    token_loss: float


def log_eval(result: EvalResult | None, epoch: int, num_epochs: int, scope: str) -> None:
    """Upstream's eval line, then which tokens the perplexity covers (``scope``) and the token-weighted value.

    ``scope`` is ``all_tokens`` (upstream: prompt and answer tokens) or ``answer_tokens``
    (``--train_on_prompt false``); evaluation's and the demo's perplexity are answer-only.
    """
    if result is not None:
        logger.info(
            "ppl: %s, loss: %s (epoch=%d/%d ppl_over=%s token_weighted_ppl=%.4f token_weighted_loss=%.4f)",
            result.perplexity,
            result.loss,
            epoch,
            num_epochs,
            scope,
            result.token_perplexity,
            result.token_loss,
        )


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs estimate needs of the model, read once per run."""

    num_layers: int
    hidden_size: int
    vocab_size: int
    num_params: int
    gradient_checkpointing: bool
    lora_dim: int


def log_throughput(
    shape: ModelShape, input_shape, seconds: float, real_tokens: int, micro_step: int, loss: float, lr: float
) -> None:
    """Upstream's throughput line (TFLOPs per device) and the same numbers as key=value."""
    batch_size, seq_len = input_shape
    tput = perf.compute_throughput(
        latency_s=seconds,
        batch_size=batch_size,
        seq_len=seq_len,
        num_tokens=real_tokens,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        vocab_size=shape.vocab_size,
        world_size=dist.get_world_size(),
        gradient_checkpointing=shape.gradient_checkpointing,
        lora_dim=shape.lora_dim,
        num_params=shape.num_params,
    )
    # One line: upstream's wording first (tools grep it), then the same numbers as key=value.
    logger.info(
        "%s | step=%d loss=%.6f lr=%.3e %s",
        perf.format_upstream_line(tput),
        micro_step,
        loss,
        lr,
        perf.format_metrics(tput),
    )
