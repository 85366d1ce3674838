"""The batching scheduler: one worker thread owns the model and answers queued requests in batches.

Requests that arrive while a batch runs wait for the next one (joined at batch boundaries, not per token: see
the README for why not transformers' continuous batching). Requests are batched only with requests that decode
the same way (temperature, top_p; a seeded sampled request runs alone, so its seed reproduces its answer).
Events go back to each request's asyncio queue through its event loop; a request cancelled by its client (a
closed connection) stops at its next token, and a batch that fails fails only its own requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from dschat.inference import batch_stream
from dschat.inference.generation import GenerationSettings

logger = logging.getLogger(__name__)

TEXT, DONE = "text", "done"


class QueueFull(Exception):
    """The server holds as many requests as it may; the client should retry later."""


@dataclass
class Job:
    """One request for the worker: a row to generate and where its events go."""

    row: batch_stream.Row
    settings: GenerationSettings
    seed: int | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    emit: Callable[..., None] = lambda kind, *payload: None

    @property
    def batch_key(self) -> Hashable:
        """Jobs with equal keys decode the same way and can share a batch."""
        s = self.settings
        if s.temperature == 0:
            return ("greedy", s.repetition_penalty)
        if self.seed is not None:
            return ("seeded", id(self))  # alone: the seed then fixes the answer
        return ("sample", s.temperature, s.top_p, s.top_k, s.repetition_penalty)


class Engine:
    """Queue plus worker thread; ``submit`` from the event loop, events arrive on ``job.events``."""

    def __init__(
        self,
        model,
        tokenizer,
        stop_ids: Sequence[int],
        max_batch_size: int = 16,
        max_queue: int = 64,
        batch_wait_seconds: float = 0.1,
    ):
        self.model, self.tokenizer, self.stop_ids = model, tokenizer, list(stop_ids)
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.batch_wait_seconds = batch_wait_seconds
        self._pending: deque[Job] = deque()
        self._batch: list[Job] = []
        self.stats = {"batches": 0, "largest_batch": 0, "requests_done": 0, "requests_cancelled": 0}
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._work, name="dschat-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for job in [*self._pending, *self._batch]:
                job.cancelled.set()
            self._cond.notify_all()
        self._thread.join(timeout=10)

    @property
    def load(self) -> dict:
        """Requests waiting and generating, and what was done so far (for /health)."""
        with self._cond:
            return {"queued": len(self._pending), "running": len(self._batch), **self.stats}

    def submit(self, job: Job) -> None:
        """Queue a job from the event loop; raises QueueFull when the server is at ``max_queue`` requests."""
        loop = asyncio.get_running_loop()
        row = job.row

        def emit(kind: str, *payload) -> None:
            loop.call_soon_threadsafe(job.events.put_nowait, (kind, *payload))

        def on_text(text: str) -> None:
            if job.first_token_at is None:
                job.first_token_at = time.perf_counter()
            emit(TEXT, text)

        row.on_text, row.is_cancelled = on_text, job.cancelled.is_set
        job.emit = emit
        with self._cond:
            if self._stopped or len(self._pending) + len(self._batch) >= self.max_queue:
                raise QueueFull
            self._pending.append(job)
            self._cond.notify()

    def _next_batch(self) -> list[Job]:
        """Wait for work, give late arrivals ``batch_wait_seconds`` to join, take the oldest job's batch."""
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return []
        time.sleep(self.batch_wait_seconds)  # requests sent together arrive a few ms apart
        with self._cond:
            key = self._pending[0].batch_key
            batch = [job for job in self._pending if job.batch_key == key][: self.max_batch_size]
            for job in batch:
                self._pending.remove(job)
            self._batch = batch
        return batch

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            self._run(batch)
            with self._cond:
                self._batch = []
                self.stats["batches"] += 1
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                self.stats["requests_done"] += len(batch)
                cancelled = sum(job.row.finish_reason == batch_stream.CANCELLED for job in batch)
                self.stats["requests_cancelled"] += cancelled

    def _run(self, batch: list[Job]) -> None:
        first = batch[0]
        rows = [job.row for job in batch]
        start = time.perf_counter()
        try:
            batch_stream.generate_rows(
                self.model, self.tokenizer, rows, first.settings, self.stop_ids, first.seed
            )
        except Exception:  # a bug or an out-of-memory: fail this batch's requests, keep serving
            logger.exception("generation failed for a batch of %d", len(batch))
            for row in rows:
                row.finish_reason = row.finish_reason or batch_stream.ERROR
        tokens = sum(len(row.token_ids) for row in rows)
        seconds = time.perf_counter() - start
        logger.info("batch size=%d new_tokens=%d seconds=%.2f", len(batch), tokens, seconds)
        for job in batch:
            job.emit(DONE, job.row.finish_reason, len(job.row.token_ids))
