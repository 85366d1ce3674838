"""Clean an eval and a train split: the per-record stage over chunks (worker processes), then the global stages.

Eval is cleaned first, so train can be decontaminated against what will be evaluated. Each split streams: records
go through the per-record stage in chunks (at most ``2 * num_proc`` chunks in flight), survivors are spooled
(in memory for the list API, to a temporary file for the CLI) with only compact features kept in RAM (a 16-byte
digest, a uint32 MinHash signature), then near-duplicates are found over the signatures and the spool is
replayed, keeping what no stage removed.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from dschat.clean.config import CleanConfig
from dschat.clean.decontam import NgramIndex
from dschat.clean.near_dup import find_near_duplicates
from dschat.clean.report import CleanReport
from dschat.clean.sources import Item, benchmark_texts
from dschat.clean.stage import ChunkResult, RecordStage, conversation_text, init_worker, run_in_worker

logger = logging.getLogger(__name__)

CHUNK_RECORDS = 1000
Emit = Callable[
    [int, str, list[dict]], None
]  # (index in the split, where, cleaned conversation) per kept record


@dataclass
class SplitResult:
    """Which input records of a split were kept (in order) and which of those the repairs changed."""

    kept: list[int] = field(default_factory=list)
    changed: set[int] = field(default_factory=set)
    digests: set[bytes] = field(
        default_factory=set
    )  # of the kept records (eval: for train's decontamination)


class MemorySpool:
    """Survivors held in a list (the list API: the caller holds the data in memory anyway)."""

    def __init__(self):
        self.rows: list[tuple[int, list[dict]]] = []

    def add(self, index: int, messages: list[dict]) -> None:
        self.rows.append((index, messages))

    def replay(self) -> Iterator[tuple[int, list[dict]]]:
        yield from self.rows
        self.rows = []


class FileSpool:
    """Survivors written to a JSON-lines file and read back once (bounded memory for big inputs)."""

    def __init__(self, path: str):
        self.path = path
        self.handle = open(path, "w", encoding="utf-8")

    def add(self, index: int, messages: list[dict]) -> None:
        self.handle.write(json.dumps([index, messages], ensure_ascii=False) + "\n")

    def replay(self) -> Iterator[tuple[int, list[dict]]]:
        self.handle.close()
        try:
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    index, messages = json.loads(line)
                    yield index, messages
        finally:
            os.remove(self.path)


def _chunks(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_stage(stage: RecordStage, items: Iterable[Item], num_proc: int) -> Iterator[ChunkResult]:
    """Chunk results in input order; with workers, at most ``2 * num_proc`` chunks are in flight (bounded memory)."""
    if num_proc <= 1:
        for chunk in _chunks(items, CHUNK_RECORDS):
            yield stage.run(chunk)
        return
    # fork: workers inherit the stage (tokenizer, eval index) instead of unpickling it
    context = multiprocessing.get_context(
        "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    )
    with context.Pool(num_proc, initializer=init_worker, initargs=(stage,)) as pool:
        pending = deque()
        for chunk in _chunks(items, CHUNK_RECORDS):
            pending.append(pool.apply_async(run_in_worker, (chunk,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


@dataclass
class _Survivors:
    """What the global stages keep per surviving record: where it came from, its digest and MinHash signature."""

    signatures: np.ndarray | None
    wheres: list[str] = field(default_factory=list)
    first_with_digest: dict[bytes, int] = field(default_factory=dict)

    def duplicate(
        self, outcome, eval_digests: set[bytes] | None, exact_dedup: bool
    ) -> tuple[str, str] | None:
        """(rule, why) when the record repeats an eval record or an earlier survivor, else None."""
        if outcome.digest is None:
            return None
        if eval_digests is not None and outcome.digest in eval_digests:
            return "contaminated", "the same conversation as an eval record"
        if exact_dedup and outcome.digest in self.first_with_digest:
            return (
                "exact_dup",
                f"same normalised conversation as {self.wheres[self.first_with_digest[outcome.digest]]}",
            )
        return None

    def add(self, outcome, signature: np.ndarray | None) -> None:
        if outcome.digest is not None:
            self.first_with_digest.setdefault(outcome.digest, len(self.wheres))
        if self.signatures is not None:
            self.signatures[len(self.wheres)] = signature
        self.wheres.append(outcome.where)


def clean_split(
    split: str,
    items: Iterable[Item],
    total: int,
    stage: RecordStage,
    report: CleanReport,
    spool,
    emit: Emit,
    eval_digests: set[bytes] | None = None,
) -> SplitResult:
    """Run every rule over one split; ``emit`` receives each kept record, in input order."""
    config = stage.config
    report.inputs[split] += total
    survivors = _Survivors(
        np.empty((total, config.near_dup_num_perm), np.uint32) if config.near_dedup else None
    )
    result, index = SplitResult(), 0
    with tqdm(total=total, desc=f"clean {split}", unit="rec", disable=total < 10 * CHUNK_RECORDS) as bar:
        for chunk in _run_stage(stage, items, config.num_proc):
            for rule, seconds in chunk.seconds.items():
                report.time(rule, seconds, chunk.checked[rule])
            start, row = time.perf_counter(), 0  # row: this record's signature row in the chunk
            for outcome in chunk.outcomes:
                _account(split, index, outcome, report, result)
                if outcome.rule is None:
                    duplicate = survivors.duplicate(outcome, eval_digests, config.exact_dedup)
                    if duplicate is not None:
                        report.drop(
                            duplicate[0],
                            split,
                            outcome.where,
                            duplicate[1],
                            conversation_text(outcome.messages),
                        )
                    else:
                        survivors.add(outcome, None if chunk.signatures is None else chunk.signatures[row])
                        spool.add(index, outcome.messages)
                    row += 1
                index += 1
            report.time("exact_dup", time.perf_counter() - start, 0)
            bar.update(len(chunk.outcomes))
    result.digests = set(survivors.first_with_digest)
    _replay(split, spool, survivors, config.near_dup_threshold, report, result, emit)
    return result


def _replay(
    split: str,
    spool,
    survivors: _Survivors,
    threshold: float,
    report: CleanReport,
    result: SplitResult,
    emit: Emit,
) -> None:
    """Drop the near-duplicates among the spooled survivors and emit the rest, in input order."""
    near = _near_duplicates(survivors.signatures, len(survivors.wheres), threshold, report)
    wheres = survivors.wheres
    for position, (record, messages) in enumerate(spool.replay()):
        twin = near.get(position)
        if twin is not None:
            why = f"near-duplicate of {wheres[twin[0]]} (estimated Jaccard {twin[1]:.2f})"
            report.drop("near_dup", split, wheres[position], why, conversation_text(messages))
            continue
        result.kept.append(record)
        report.lengths_after.append(sum(len(m["content"]) for m in messages))
        emit(record, wheres[position], messages)
    result.changed &= set(result.kept)
    report.kept[split] += len(result.kept)


def _account(split: str, index: int, outcome, report: CleanReport, result: SplitResult) -> None:
    """Record a per-record outcome in the report: its changes, its drop, its input length."""
    if outcome.messages is not None:
        report.lengths_before.append(outcome.chars_before)
    for rule, before, after in outcome.changes:
        report.change(rule, split, outcome.where, before, after)
        result.changed.add(index)
    if outcome.rule is not None:
        report.drop(outcome.rule, split, outcome.where, outcome.why, outcome.text)


def _near_duplicates(
    signatures: np.ndarray | None, count: int, threshold: float, report: CleanReport
) -> dict[int, tuple[int, float]]:
    """Survivor position -> (kept twin's position, estimated Jaccard) for every near-duplicate to drop."""
    if signatures is None:
        return {}
    start = time.perf_counter()
    found = find_near_duplicates(signatures[:count], threshold)
    report.time("near_dup", time.perf_counter() - start, 0)
    return {dup.index: (dup.kept, dup.jaccard) for dup in found}


def build_eval_index(
    config: CleanConfig, eval_conversations: Iterable[tuple[str, list[dict]]], output_path: str, seed: int
) -> NgramIndex | None:
    """The decontamination index over the kept eval records and the ``--decontaminate_against`` files."""
    if not config.decontaminate:
        return None
    index = NgramIndex(config.decontaminate_ngram)
    for where, messages in eval_conversations:
        index.add_conversation(messages, f"eval {where}")
    for text, where, is_prompt in benchmark_texts(config.decontaminate_against, output_path, seed):
        index.add(text, where, whole_if_short=is_prompt)
    logger.info("decontamination index: %d n-grams from %d texts", len(index.freeze()), len(index.sources))
    return index


def clean_train_and_eval(
    train: tuple[Iterable[Item], int],
    evaluation: tuple[Iterable[Item], int],
    config: CleanConfig,
    tokenizer,
    make_spool: Callable[[str], object],
    emit_train: Emit,
    emit_eval: Emit,
    output_path: str = "/tmp/data_files/",
    seed: int = 1234,
) -> tuple[CleanReport, SplitResult, SplitResult]:
    """Clean eval, index it (plus benchmark files), then clean train against it. ``(items, count)`` per split."""
    report = CleanReport(settings=config.cache_fields())
    if tokenizer is None:
        note = "Skipped: no tokenizer (pass --model_name_or_path)"
        report.rules["truncated"].note = report.rules["no_loss_tokens"].note = note
    kept_eval: list[tuple[str, list[dict]]] = []

    def keep_eval(index: int, where: str, messages: list[dict]) -> None:
        kept_eval.append((where, messages))
        emit_eval(index, where, messages)

    stage = RecordStage(config, tokenizer)
    eval_result = clean_split(
        "eval", evaluation[0], evaluation[1], stage, report, make_spool("eval"), keep_eval
    )
    start = time.perf_counter()
    index = build_eval_index(config, kept_eval, output_path, seed)
    report.time("contaminated", time.perf_counter() - start, 0)
    kept_eval.clear()
    stage = RecordStage(config, tokenizer, index)
    eval_digests = eval_result.digests if config.decontaminate else None
    train_result = clean_split(
        "train", train[0], train[1], stage, report, make_spool("train"), emit_train, eval_digests
    )
    return report, train_result, eval_result
