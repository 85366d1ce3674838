"""What a run reports per step: metrics.jsonl rows (rank 0), eval lines and the throughput line."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from dschat.run_dir import METRICS_NAME
from dschat.utils import dist, perf

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Per-step JSON lines in the output dir (rank 0), so runs can be plotted and compared.

    A resumed run keeps the rows up to its checkpoint (``keep_steps``) and continues the file.
    """

    def __init__(self, output_dir: str | None, keep_steps: int | None = None):
        self.handle = None
        if output_dir and dist.get_rank() == 0:
            os.makedirs(output_dir, exist_ok=True)
            path = os.path.join(output_dir, METRICS_NAME)
            kept = []
            if keep_steps is not None and os.path.isfile(path):
                with open(path) as old:
                    kept = [line for line in old if json.loads(line)["step"] <= keep_steps]
            self.handle = open(path, "w")
            self.handle.writelines(kept)

    def write(self, **row) -> None:
        if self.handle:
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


@dataclass
class EvalResult:
    """Upstream's perplexity (mean of batch means, rank-averaged) and the token-weighted one beside it."""

    perplexity: float
    loss: float
    token_perplexity: float
    token_loss: float


def log_eval(result: EvalResult | None, epoch: int, num_epochs: int) -> None:
    if result is not None:
        logger.info(
            "ppl: %s, loss: %s (epoch=%d/%d token_weighted_ppl=%.4f token_weighted_loss=%.4f)",
            result.perplexity,
            result.loss,
            epoch,
            num_epochs,
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
    logger.info(perf.format_upstream_line(tput))
    logger.info("step=%d loss=%.6f lr=%.3e %s", micro_step, loss, lr, perf.format_metrics(tput))
