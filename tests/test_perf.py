"""Throughput arithmetic pinned to hand-computed Megatron FLOPs (spec 8.2) and upstream's exact line."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, LlamaConfig, OPTConfig

from dschat.utils.perf import (
    Throughput,
    compute_throughput,
    count_parameters,
    flops_per_iteration,
    format_metrics,
    format_upstream_line,
    get_hf_configs,
)

# OPT-1.3b-like step: L=24, h=2048, V=50272, b=8, s=512.
OPT = dict(batch_size=8, seq_len=512, num_layers=24, hidden_size=2048, vocab_size=50272)
# By hand: 24 b s L h^2 = 24 * 8 * 512 * 24 * 2^22 = 9 * 2^40, and
# 1 + s/(6h) + V/(16 L h) = 1 + 1/24 + 1571/24576 = 27171/24576 = 27171/(3 * 2^13),
# so FLOPs = f * 9 * 2^40 * 27171 / (3 * 2^13) = f * 81513 * 2^27 = f * 10_940_489_662_464.
FLOPS_PER_UNIT_FACTOR = 10_940_489_662_464


@pytest.mark.parametrize(
    "checkpointing, lora_dim, factor",
    [
        (False, 0, 3.0),
        (True, 0, 4.0),
        (False, 128, 3.0 - (1 - 2 * 128 / 2048)),  # 2.125
        (True, 128, 4.0 - (1 - 2 * 128 / 2048)),  # 3.125
        (False, 8, 2.0078125),  # 3 - (1 - 16/2048)
    ],
)
def test_flops_opt_1_3b_by_hand(checkpointing, lora_dim, factor):
    flops = flops_per_iteration(**OPT, gradient_checkpointing=checkpointing, lora_dim=lora_dim)
    assert flops == pytest.approx(factor * FLOPS_PER_UNIT_FACTOR, rel=1e-12)


def test_flops_pinned_literals():
    assert flops_per_iteration(**OPT, gradient_checkpointing=False, lora_dim=0) == pytest.approx(
        32_821_468_987_392, rel=1e-12
    )
    assert flops_per_iteration(**OPT, gradient_checkpointing=True, lora_dim=128) == pytest.approx(
        34_189_030_195_200, rel=1e-12
    )


def opt_step(**overrides) -> Throughput:
    args = dict(
        latency_s=0.5,
        **OPT,
        num_tokens=3000,
        world_size=2,
        gradient_checkpointing=False,
        lora_dim=0,
        num_params=1_315_758_080,
    )
    args.update(overrides)
    return compute_throughput(**args)


def test_compute_throughput_values():
    result = opt_step()
    assert result.latency_s == 0.5
    assert result.samples_per_second == 16.0
    assert result.seconds_per_sample == 0.0625
    assert result.tflops == pytest.approx(32_821_468_987_392 / 0.5 / 1e12)  # 65.64 per device
    assert result.upstream_tflops == pytest.approx(result.tflops / 2)  # upstream divides by world size again
    assert result.tokens_per_second == 6000.0
    assert (result.batch_size, result.seq_len, result.num_params, result.world_size) == (
        8,
        512,
        1_315_758_080,
        2,
    )


def test_throughput_uses_actual_batch_shape():
    # Dynamic padding: this batch is 4 x 100, not 8 x --max_seq_len.
    result = opt_step(batch_size=4, seq_len=100, num_tokens=333, world_size=1)
    expected = flops_per_iteration(4, 100, 24, 2048, 50272, gradient_checkpointing=False, lora_dim=0)
    assert result.tflops == pytest.approx(expected / 0.5 / 1e12)
    assert result.upstream_tflops == result.tflops  # one rank: both figures agree
    assert (result.batch_size, result.seq_len) == (4, 100)
    assert result.samples_per_second == 8.0
    assert result.tokens_per_second == 666.0


def test_compute_throughput_rejects_non_positive_latency():
    with pytest.raises(ValueError, match="latency"):
        opt_step(latency_s=0.0)


def test_format_upstream_line_exact():
    assert format_upstream_line(opt_step()) == (
        "Model Parameters: 1.316 B, Latency: 0.50s, TFLOPs: 65.64, Samples/sec: 16.00, Time/seq 0.06s, "
        "Batch Size: 8, Sequence Length: 512"
    )
    assert format_upstream_line(opt_step(num_params=0, latency_s=2.0, world_size=1)) == (
        "Model Parameters: NA, Latency: 2.00s, TFLOPs: 16.41, Samples/sec: 4.00, Time/seq 0.25s, "
        "Batch Size: 8, Sequence Length: 512"
    )


def test_format_metrics_key_value():
    line = format_metrics(opt_step())
    pairs = dict(item.split("=") for item in line.split(" "))
    assert pairs == {
        "latency_s": "0.5000",
        "samples_per_second": "16.000",
        "seconds_per_sample": "0.0625",
        "tokens_per_second": "6000.0",
        "tflops_per_device": "65.643",
        "upstream_tflops": "32.821",
        "batch_size": "8",
        "seq_len": "512",
        "num_params": "1315758080",
    }


@pytest.mark.parametrize(
    "config, expected",
    [
        (
            OPTConfig(
                vocab_size=300,
                hidden_size=32,
                num_hidden_layers=2,
                ffn_dim=64,
                num_attention_heads=4,
                word_embed_proj_dim=32,
            ),
            (2, 32, 300),
        ),
        (
            LlamaConfig(
                vocab_size=301,
                hidden_size=48,
                num_hidden_layers=3,
                intermediate_size=96,
                num_attention_heads=4,
            ),
            (3, 48, 301),
        ),
        (GPT2Config(vocab_size=302, n_embd=64, n_layer=5, n_head=4), (5, 64, 302)),
    ],
)
def test_get_hf_configs(config, expected):
    assert get_hf_configs(config) == expected


def test_get_hf_configs_gpt2_style_names_without_aliases():
    class Bare:
        n_layer, n_embd, vocab_size = 7, 16, 99

    assert get_hf_configs(Bare()) == (7, 16, 99)


def test_get_hf_configs_missing_is_a_bug():
    class NoVocab:
        num_hidden_layers, hidden_size = 2, 8

    with pytest.raises(ValueError, match="NoVocab has no vocab_size"):
        get_hf_configs(NoVocab())


def test_count_parameters_prefers_ds_numel():
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2, bias=False))
    assert count_parameters(module) == 4 * 3 + 3 + 3 * 2
    # ZeRO-3 leaves an empty local tensor and records the full size in ds_numel.
    module[0].weight.data = torch.empty(0)
    module[0].weight.ds_numel = 12
    assert count_parameters(module) == 12 + 3 + 6


def test_count_parameters_tied_weights_once():
    embed = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    assert count_parameters(torch.nn.ModuleList([embed, head])) == 40
