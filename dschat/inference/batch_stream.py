"""Batched, streamed, cancellable generation: many prompts in one ``model.generate``, each answer streamed on its own.

The server's generation path, built on generation.py's pieces (``GenerationSettings.to_config``, the stop token
ids, ``cut_at_markers``) so it decodes exactly as the chatbot and evaluation do. Each row has its own stop strings,
token limit and cancel flag; a StoppingCriteria sees every new token (transformers calls it right after a token is
chosen) and turns it into text, marks the rows that are done and generation ends when all are. Prompts are left
padded, so every row continues right after its own prompt, as ``generation.generate_batch`` does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from dschat.inference.generation import GenerationSettings, cut_at_markers

logger = logging.getLogger(__name__)

STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"
# Decoding a token cut inside a multi-byte character gives the replacement character until the rest arrives.
INCOMPLETE_CHARACTER = "\ufffd"


def _never() -> bool:
    return False


def _discard(text: str) -> None:
    return None


@dataclass
class Row:
    """One prompt of a batch: its limits and callbacks in, its answer out.

    ``strip``: drop the answer's leading and trailing whitespace (upstream's format puts a space before the
    answer), as the chatbot does; raw completions keep it.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    strip: bool = True
    on_text: Callable[[str], None] = _discard
    is_cancelled: Callable[[], bool] = _never
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    shown: int = 0
    finish_reason: str | None = None

    def _held(self) -> int:
        """Characters at the end that may begin a stop string (or are whitespace that may end the answer)."""
        held = max(
            (n for m in self.stop_strings for n in range(1, len(m)) if self.text.endswith(m[:n])), default=0
        )
        if self.strip:
            held = max(held, len(self.text) - len(self.text.rstrip()))
        if self.text.endswith(INCOMPLETE_CHARACTER):  # the rest of the character is in the next token
            held = max(held, len(self.text) - len(self.text.rstrip(INCOMPLETE_CHARACTER)))
        return held

    def _emit(self, final: bool) -> None:
        end = len(self.text.rstrip()) if final and self.strip else len(self.text)
        if not final:
            end -= self._held()
        if end > self.shown:
            self.on_text(self.text[self.shown : end])
            self.shown = end

    def add_token(self, token: int, tokenizer, stop_ids: Sequence[int]) -> None:
        """Take the next generated token: text out, or the reason the answer ended."""
        if token in stop_ids:
            self.finish(STOP)
            return
        self.token_ids.append(token)
        text = tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if self.strip:
            text = text.lstrip()
        cut = cut_at_markers(text, self.stop_strings)
        self.text = cut
        if len(cut) < len(text):
            self.finish(STOP)
        elif len(self.token_ids) >= self.max_new_tokens:
            self.finish(LENGTH)
        else:
            self._emit(final=False)

    def finish(self, reason: str) -> None:
        """End the answer: flush the held-back text (not on cancel, nobody is listening)."""
        if self.finish_reason is None:
            self.finish_reason = reason
            if reason != CANCELLED:
                self._emit(final=True)

    @property
    def answer(self) -> str:
        """The answer as the chatbot returns it (cut at the first stop string, stripped when ``strip``)."""
        return self.text.strip() if self.strip else self.text


class _RowsCriteria(StoppingCriteria):
    """Feeds each row its newest token and tells ``generate`` which rows are done."""

    def __init__(self, rows: list[Row], tokenizer, stop_ids: Sequence[int]):
        self.rows, self.tokenizer, self.stop_ids = rows, tokenizer, list(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        newest = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, newest):
            if row.finish_reason is None and row.is_cancelled():
                row.finish(CANCELLED)
            if row.finish_reason is None:
                row.add_token(token, self.tokenizer, self.stop_ids)
        done = [row.finish_reason is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def left_padded(
    rows: list[Row], pad_token_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the prompts, left padded to the longest."""
    width = max(len(row.prompt_ids) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
        mask[i, width - len(row.prompt_ids) :] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_rows(
    model,
    tokenizer,
    rows: list[Row],
    settings: GenerationSettings,
    stop_ids: Sequence[int],
    seed: int | None = None,
) -> None:
    """Generate every row's answer in one batch (``settings`` shared, limits per row); rows end finished."""
    rows_left = []
    for row in rows:
        if row.is_cancelled():
            row.finish(CANCELLED)
        else:
            rows_left.append(row)
    if not rows_left:
        return
    settings = dataclasses.replace(settings, max_new_tokens=max(row.max_new_tokens for row in rows_left))
    input_ids, attention_mask = left_padded(rows_left, tokenizer.pad_token_id, model.device)
    if seed is not None:
        torch.manual_seed(seed)
    model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=settings.to_config(stop_ids, tokenizer.pad_token_id),
        stopping_criteria=StoppingCriteriaList([_RowsCriteria(rows_left, tokenizer, stop_ids)]),
    )
    for row in rows_left:
        row.finish(LENGTH)  # only rows still open: generate ran out of new tokens
