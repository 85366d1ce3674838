"""The LM head and its cross-entropy, chunk by chunk over the positions that carry loss (--lm_loss chunked).

transformers computes ``lm_head(hidden)`` for every position (batch x width x vocabulary floats: 400 MB for
SmolLM2 at 4 x 512 in fp32), shifts a copy, and keeps a log-softmax of the same size for backward, also for
positions whose label is -100 (padding, a masked prompt, each packed sample's first token). Here only the
loss-bearing positions go through the head, a few hundred rows at a time: each chunk's logits give its
loss and, at once, the gradients of that loss for the hidden states, the weight and the bias, and are freed
before the next chunk. The maths is transformers' loss (the token mean, or the sum / ``num_items_in_batch``);
only the order of the sums differs. This is the idea behind Liger's fused linear cross-entropy, in plain torch,
so it runs wherever torch does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import CausalLMOutputWithPast

from dschat.utils.data.collate import IGNORE_INDEX

# Architectures whose causal-LM forward is exactly ``lm_head(base_model(...)[0])``, then transformers' loss
# (read in transformers' modeling files): no logit scaling or soft-capping, no auxiliary router loss.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    (
        "bloom falcon gemma gpt2 gpt_bigcode gpt_neox gptj llama mistral olmo olmo2 opt phi phi3 qwen2 qwen3 "
        "smollm3 stablelm starcoder2"
    ).split()
)
LOGITS_PER_CHUNK = 1 << 24  # floats of one chunk's logits (64 MB in fp32): ~340 rows of a 49k vocabulary
# Arguments that ask for the full logits or other outputs: with them, the model's own forward runs.
NEEDS_FULL_FORWARD = ("output_attentions", "output_hidden_states", "logits_to_keep", "return_dict")


class LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross_entropy(hidden @ weight.T + bias, targets), with the gradients computed chunk by
    chunk in the forward pass and scaled in the backward pass: no full logits tensor is ever kept."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows_per_chunk: int, grad_enabled: bool):
        # needs_input_grad ignores torch.no_grad(): under it (evaluation) no gradient is computed
        wants = [grad_enabled and needed for needed in ctx.needs_input_grad[:3]]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if wants[0] else None
        grad_weight = torch.zeros_like(weight) if wants[1] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and wants[2] else None
        for start in range(0, hidden.size(0), rows_per_chunk):
            rows = hidden[start : start + rows_per_chunk]
            target = targets[start : start + rows_per_chunk]
            logits = F.linear(rows, weight, bias).float()
            log_normaliser = torch.logsumexp(logits, dim=-1)
            total += (log_normaliser - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if not any(wants):
                continue
            # d(sum of cross-entropies) / d(logits) = softmax - one_hot(target), built in place in the logits
            grad_logits = logits.sub_(log_normaliser[:, None]).exp_()
            grad_logits[torch.arange(len(target), device=target.device), target] -= 1.0
            grad_logits = grad_logits.to(rows.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start : start + rows_per_chunk])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), rows)
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        scaled = [None if grad is None else grad * grad_total.to(grad.dtype) for grad in ctx.saved_tensors]
        return (*scaled, None, None, None)


def lm_head_loss(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """transformers' causal-LM loss of ``head(hidden)`` against ``labels`` (shifted inside, -100 ignored): the
    mean over loss-bearing tokens, or their sum / ``num_items_in_batch`` when given."""
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    rows, targets = hidden[:, :-1][keep], targets[keep]
    if type(head) is torch.nn.Linear and not hasattr(head.weight, "ds_id"):
        rows_per_chunk = max(1, LOGITS_PER_CHUNK // head.out_features)
        total = LinearCrossEntropy.apply(
            rows, head.weight, head.bias, targets, rows_per_chunk, torch.is_grad_enabled()
        )
    else:
        # A LoRA head or ZeRO-3's partitioned weight: the module itself runs (its hooks gather the weight), on
        # the loss-bearing rows only.
        total = F.cross_entropy(head(rows).float(), targets, reduction="sum")
    denominator = keep.sum() if num_items_in_batch is None else num_items_in_batch
    return total / denominator


def chunked_loss_unsupported(model: torch.nn.Module) -> str | None:
    """Why the chunked loss cannot replace this model's own (None when it can)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in PLAIN_HEAD_MODEL_TYPES:
        return f"model type {model_type!r} is not one whose head is known to be a plain projection"
    if getattr(model, "_dschat_original_forward", None) is not None:
        return "the model's forward is already replaced"
    if model.get_output_embeddings() is None or model.base_model is model:
        return "the model has no separate base model and output projection"
    return None


def use_chunked_loss(model: torch.nn.Module) -> None:
    """Make ``model(..., labels=...)`` compute its loss with ``lm_head_loss`` (logits are then not returned);
    without labels, or when other outputs are asked for, the model's own forward runs."""
    original_forward = model.forward

    def forward_with_chunked_loss(
        input_ids=None, labels=None, num_items_in_batch=None, use_cache=None, **kwargs
    ):
        if labels is None or any(kwargs.get(name) is not None for name in NEEDS_FULL_FORWARD):
            if num_items_in_batch is not None:
                kwargs["num_items_in_batch"] = num_items_in_batch
            return original_forward(input_ids=input_ids, labels=labels, use_cache=use_cache, **kwargs)
        outputs = model.base_model(input_ids=input_ids, use_cache=False, **kwargs)
        loss = lm_head_loss(model.get_output_embeddings(), outputs[0], labels, num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss)

    model._dschat_original_forward = original_forward
    model.forward = forward_with_chunked_loss
