"""Answer-only perplexity: how likely a model finds the reference answers, each token given its prompt.

The prompt is rendered in the given format exactly as training renders it; only answer tokens are scored,
so the number compares models on what they answer, not on how well they predict the question.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dschat.errors import DschatError
from dschat.utils.data import prompts

# (prompt: a string (one user message) or a list of messages, reference answer)
Sample = tuple[str | list[dict], str]


def to_messages(prompt: str | list[dict]) -> list[dict]:
    """A prompt as chat messages: a plain string is one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _encode_answer_mask(
    tokenizer, prompt: str, response: str, add_specials: bool
) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response as training tokenised them, and 1 for each response token."""
    from dschat.utils.data.data_utils import answer_token_mask

    full = prompt + response
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=add_specials, return_offsets_mapping=True)
        return enc["input_ids"], answer_token_mask(enc["offset_mapping"], [(len(prompt), len(full))])
    prompt_ids = tokenizer(prompt, add_special_tokens=add_specials)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids)


@torch.no_grad()
def response_perplexity(
    model,
    tokenizer,
    samples: Sequence[Sample],
    prompt_template: str,
    eos_token: str = "",
    batch_size: int = 8,
    max_len: int | None = None,
) -> float:
    """exp(mean NLL over all reference-answer tokens), each predicted from its prompt and the answer so far."""
    encoded = []
    for prompt, reference in samples:
        texts = prompts.prompt_and_response(
            to_messages(prompt), reference, prompt_template, tokenizer, eos_token
        )
        ids, mask = _encode_answer_mask(tokenizer, *texts, prompts.adds_special_tokens(prompt_template))
        if max_len is not None:  # keep the answer: drop the start of over-long prompts
            ids, mask = ids[-max_len:], mask[-max_len:]
        encoded.append((ids, mask))
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # Right padding: real tokens keep positions 0..n-1, exactly as in a one-sample forward pass.
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk], device=model.device)
        attention = torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk], device=model.device
        )
        answer = torch.tensor([m + [0] * (width - len(m)) for _, m in chunk], device=model.device)
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        targets = answer[:, 1:].bool()
        total_nll += nll[targets].sum().item()
        total_tokens += int(targets.sum().item())
    if total_tokens == 0:
        raise DschatError("no answer tokens to score (every reference answer is empty or truncated away)")
    return math.exp(total_nll / total_tokens)
