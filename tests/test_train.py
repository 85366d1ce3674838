"""Training maths against independent computations: accumulation weighting, evaluation averages."""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from dschat.utils import optim, train
from dschat.utils.data.collate import REAL_TOKENS, SFTCollator


def make_batch(lengths, vocab=300, pad=2, width=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    items = [
        {
            "input_ids": torch.randint(3, vocab, (n,), generator=generator),
            "answer_mask": torch.ones(n, dtype=bool),
        }
        for n in lengths
    ]
    batch = SFTCollator(pad, width)(items)
    batch.pop(REAL_TOKENS)
    return batch


def engine_for(model, gas):
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "train_batch_size": 2 * gas,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 0},
    }
    optimizer = optim.create_optimizer(
        optim.get_optimizer_grouped_parameters(model, 0.0), 1e-3, offload=False
    )
    args = argparse.Namespace(gradient_checkpointing=False, local_rank=0, deepspeed_config=None)
    return train.create_engine(model, optimizer, None, config, args)


def test_accumulated_gradient_weights_micro_batches_equally_not_by_tokens(tiny_models, dist_env):
    """Upstream's maths: each micro-batch's loss is its own token mean; micro-batches count equally."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["opt8"], dtype=torch.float32)
    model.config.dropout = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    reference = copy.deepcopy(model)
    short, long = make_batch([3, 4], seed=1), make_batch([12, 11], seed=2)
    engine = engine_for(model, gas=2)
    for batch in (short, long):
        engine.backward(engine(**batch).loss)
    engine_grads = {n: p.grad.clone() for n, p in engine.module.named_parameters() if p.grad is not None}

    loss = (reference(**short).loss + reference(**long).loss) / 2
    loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert engine_grads.keys() == expected.keys()
    for name, grad in expected.items():
        assert torch.allclose(engine_grads[name], grad, atol=1e-6), name

    # The token-weighted alternative gives a measurably different gradient, so the check above can fail.
    reference.zero_grad()
    n_short = train.count_targets(short["labels"])
    n_long = train.count_targets(long["labels"])
    weighted = (reference(**short).loss * n_short + reference(**long).loss * n_long) / (n_short + n_long)
    weighted.backward()
    name = "model.decoder.embed_tokens.weight"
    assert not torch.allclose(reference.get_parameter(name).grad, expected[name], atol=1e-6)


def test_evaluate_is_upstreams_mean_of_batch_means_with_the_token_weighted_value_beside(
    tiny_models, dist_env
):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["opt8"], dtype=torch.float32)
    batches = [make_batch([3, 9], seed=3), make_batch([12, 5], seed=4), make_batch([7], seed=5)]
    engine = engine_for(copy.deepcopy(model), gas=1)
    result = train.evaluate(engine, batches, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        losses = [model(**b).loss.item() for b in batches]
    counts = [train.count_targets(b["labels"]) for b in batches]
    mean = sum(losses) / len(losses)
    token = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    assert result.loss == pytest.approx(mean, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(mean), rel=1e-5)
    assert result.token_loss == pytest.approx(token, rel=1e-5)
    assert abs(result.token_loss - result.loss) > 1e-4
    assert train.evaluate(engine, [], torch.device("cpu")) is None
