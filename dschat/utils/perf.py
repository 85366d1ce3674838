"""Throughput and TFLOPs arithmetic for one training step (spec 8.2); no printing, no torch.distributed.

FLOPs follow the Megatron estimate upstream uses. Two differences from upstream, both visible in the result:
TFLOPs are per device (upstream divides by the world size once more, kept as ``upstream_tflops``), and the
batch shape is the one actually passed in (with dynamic padding it can be shorter than --max_seq_len).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# FLOPs of one forward pass = 1 unit; backward = 2; recomputing activations with checkpointing = 1 more.
FORWARD_BACKWARD_FACTOR = 3
CHECKPOINTING_FACTOR = 4


def get_hf_configs(hf_config: Any) -> tuple[int, int, int]:
    """(num_layers, hidden_size, vocab_size) from a Hugging Face config, GPT-2 style names included."""
    found = {
        "num_hidden_layers|n_layer": _first_attr(hf_config, "num_hidden_layers", "n_layer"),
        "hidden_size|n_embd": _first_attr(hf_config, "hidden_size", "n_embd"),
        "vocab_size": _first_attr(hf_config, "vocab_size"),
    }
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise ValueError(f"{type(hf_config).__name__} has no {', '.join(missing)}: cannot estimate FLOPs")
    num_layers, hidden_size, vocab_size = found.values()
    return int(num_layers), int(hidden_size), int(vocab_size)


def _first_attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def flops_per_iteration(
    batch_size: int,
    seq_len: int,
    num_layers: int,
    hidden_size: int,
    vocab_size: int,
    gradient_checkpointing: bool,
    lora_dim: int,
) -> float:
    """Training FLOPs of one step on one batch: 24 f b s L h^2 (1 + s/(6h) + V/(16 L h)).

    f = 3 (forward + backward), 4 with gradient checkpointing; with LoRA the frozen base weights need no
    weight gradients, which upstream models as f -= 1 - 2 r / h.
    """
    factor = float(CHECKPOINTING_FACTOR if gradient_checkpointing else FORWARD_BACKWARD_FACTOR)
    if lora_dim > 0:
        factor -= 1.0 - 2.0 * lora_dim / hidden_size
    s, L, h, V = seq_len, num_layers, hidden_size, vocab_size
    return 24.0 * factor * batch_size * s * L * h**2 * (1.0 + s / (6.0 * h) + V / (16.0 * L * h))


def count_parameters(module: torch.nn.Module) -> int:
    """Parameter count; ZeRO-3 partitioned parameters count their full size (``ds_numel``)."""
    return sum(int(getattr(p, "ds_numel", None) or p.numel()) for p in module.parameters())


@dataclass(frozen=True)
class Throughput:
    """One training step's speed on this device."""

    latency_s: float
    samples_per_second: float  # per device
    seconds_per_sample: float
    tflops: float  # per device: this device's FLOPs / latency
    upstream_tflops: float  # upstream's figure: tflops / world_size
    tokens_per_second: float  # non-pad tokens of this device's batch / latency
    batch_size: int
    seq_len: int
    num_params: int
    world_size: int


def compute_throughput(
    *,
    latency_s: float,
    batch_size: int,
    seq_len: int,
    num_tokens: int,
    num_layers: int,
    hidden_size: int,
    vocab_size: int,
    world_size: int,
    gradient_checkpointing: bool,
    lora_dim: int,
    num_params: int,
) -> Throughput:
    """One step's throughput; batch_size x seq_len is the tensor run here, num_tokens its non-pad tokens."""
    if latency_s <= 0:
        raise ValueError(f"step latency must be positive, got {latency_s!r} s")
    flops = flops_per_iteration(
        batch_size, seq_len, num_layers, hidden_size, vocab_size, gradient_checkpointing, lora_dim
    )
    tflops = flops / latency_s / 1e12
    return Throughput(
        latency_s=latency_s,
        samples_per_second=batch_size / latency_s,
        seconds_per_sample=latency_s / batch_size,
        tflops=tflops,
        upstream_tflops=tflops / world_size,
        tokens_per_second=num_tokens / latency_s,
        batch_size=batch_size,
        seq_len=seq_len,
        num_params=num_params,
        world_size=world_size,
    )


def format_upstream_line(result: Throughput) -> str:
    """Upstream's per-step line, character for character, with the TFLOPs bug fixed: per device, not divided
    by the world size a second time (``format_metrics`` also reports upstream's figure)."""
    billions = result.num_params / 1e9
    params = f"{billions:.3f} B" if billions != 0 else "NA"
    return (
        f"Model Parameters: {params}, Latency: {result.latency_s:.2f}s, "
        f"TFLOPs: {result.tflops:.2f}, Samples/sec: {result.samples_per_second:.2f}, "
        f"Time/seq {result.seconds_per_sample:.2f}s, Batch Size: {result.batch_size}, "
        f"Sequence Length: {result.seq_len}"
    )


def format_metrics(result: Throughput) -> str:
    """The same step as grep-able ``key=value`` pairs, TFLOPs per device and upstream's figure both."""
    return " ".join(
        [
            f"latency_s={result.latency_s:.4f}",
            f"samples_per_second={result.samples_per_second:.3f}",
            f"seconds_per_sample={result.seconds_per_sample:.4f}",
            f"tokens_per_second={result.tokens_per_second:.1f}",
            f"tflops_per_device={result.tflops:.3f}",
            f"upstream_tflops={result.upstream_tflops:.3f}",
            f"batch_size={result.batch_size}",
            f"seq_len={result.seq_len}",
            f"num_params={result.num_params}",
        ]
    )
