"""Token-length rules: a record rendered and tokenised as training will, truncated at --max_seq_len."""

from __future__ import annotations

from dataclasses import dataclass

from dschat.utils.data import prompts


@dataclass(frozen=True)
class TokenCount:
    """One record's tokens: all of them, and those that still carry loss after truncation."""

    tokens: int
    loss_tokens: int


class TokenLengths:
    """Render with the training prompt format (upstream text + EOS, or the chat template), count tokens."""

    def __init__(self, tokenizer, max_seq_len: int, prompt_template: str, train_on_prompt: bool):
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.prompt_template = prompt_template
        self.train_on_prompt = train_on_prompt
        self.add_special_tokens = prompts.adds_special_tokens(prompt_template)
        self.eos = "" if prompt_template == prompts.CHAT_TEMPLATE else (tokenizer.eos_token or "")

    def count(self, conversations: list[list[dict]]) -> list[TokenCount]:
        """Token counts of a batch of conversations (one tokenizer call)."""
        if not conversations:
            return []  # tokenizers reject an empty batch
        texts, spans = [], []
        for messages in conversations:
            segments = prompts.render(messages, self.prompt_template, self.tokenizer)
            text = "".join(s.text for s in segments) + self.eos
            texts.append(text)
            spans.append(prompts.answer_spans(segments))
        counts = []
        for i, (ids, offsets) in enumerate(self._encode(texts)):
            kept = min(len(ids), self.max_seq_len)
            if self.train_on_prompt:
                loss_tokens = max(kept - 1, 0)  # every token but the first is a target
            else:  # the first token is never a target
                loss_tokens = sum(end > start and _inside(start, spans[i]) for start, end in offsets[1:kept])
            counts.append(TokenCount(len(ids), loss_tokens))
        return counts

    def _encode(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
        """Ids (and character offsets when answer-only loss needs them) as the tokenizer's ``__call__`` gives.

        A fast tokenizer's Rust backend is called directly: the same encodings, without transformers' per-batch
        Python overhead (1.6-2x faster measured on SmolLM2's tokenizer).
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        with_offsets = not self.train_on_prompt
        if backend is not None and backend.truncation is None and backend.padding is None:
            encode = (
                backend.encode_batch
                if with_offsets or not hasattr(backend, "encode_batch_fast")
                else backend.encode_batch_fast
            )
            encodings = encode(texts, add_special_tokens=self.add_special_tokens)
            return [(e.ids, e.offsets if with_offsets else None) for e in encodings]
        encoded = self.tokenizer(
            texts,
            add_special_tokens=self.add_special_tokens,
            return_offsets_mapping=with_offsets,
            verbose=False,
        )
        offsets = encoded["offset_mapping"] if with_offsets else [None] * len(texts)
        return list(zip(encoded["input_ids"], offsets))


def _inside(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(a <= position < b for a, b in spans)
