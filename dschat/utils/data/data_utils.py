"""Phase-1 datasets as upstream builds them: split, tokenise, blend and cache (safely).

The entry point is ``prepare_datasets(DataConfig, tokenizer)``; upstream's ``create_prompt_dataset(...)`` is
kept as the compatibility face over it. Building has three named steps: ``tokenize_source`` (one dataset's
phase-1 train and eval parts), ``build_phase1`` (blend the sources in upstream's order) and ``load_or_build``
(the cache: one rank per node builds while the others wait, as upstream; unlike upstream, files are written
under a lock to a temporary name and renamed when complete, the key covers the tokenizer's identity and local
data files, and the cache holds plain arrays, no pickle).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np

from dschat.config import DataConfig
from dschat.errors import DschatError
from dschat.utils import dist
from dschat.utils.data import prompts, report, splits
from dschat.utils.data.cache import cache_key, file_lock, load_cached
from dschat.utils.data.cleaning import CleanedSample, clean_source
from dschat.utils.data.raw_datasets import get_raw_dataset
from dschat.utils.data.tokenized import PromptDataset, TokenizedSamples
from dschat.utils.model.model_utils import position_limit

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 512


def render_sample(raw, sample, prompt_template: str, tokenizer, end_of_conversation_token: str):
    """The training text of one raw sample and its answer character spans, or None to skip it."""
    if isinstance(sample, CleanedSample):
        return render_messages(sample.messages, prompt_template, tokenizer, end_of_conversation_token)
    if prompt_template == prompts.CHAT_TEMPLATE:
        messages = raw.get_conversation(sample)
        if messages is None:
            return None
        segments = prompts.render_chat_template(tokenizer, messages)
        return "".join(s.text for s in segments), prompts.answer_spans(segments)
    text = raw.get_prompt_and_chosen(sample)
    if text is None:
        return None
    text += end_of_conversation_token
    return text, prompts.answer_spans_upstream(text)


def render_messages(messages: list[dict], prompt_template: str, tokenizer, end_of_conversation_token: str):
    """The training text and answer spans of a conversation given as messages (a repaired record)."""
    if prompt_template == prompts.CHAT_TEMPLATE:
        segments = prompts.render_chat_template(tokenizer, messages)
        return "".join(s.text for s in segments), prompts.answer_spans(segments)
    text = "".join(s.text for s in prompts.render_upstream(messages)) + end_of_conversation_token
    return text, prompts.answer_spans_upstream(text)


def answer_token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """1 for tokens whose characters start inside an answer span."""
    mask = []
    for start, end in offsets:
        inside = end > start and any(a <= start < b for a, b in spans)
        mask.append(int(inside))
    return mask


def tokenize_texts(tokenizer, texts, spans, max_seq_len: int, add_special_tokens: bool):
    """Tokenise as upstream (truncation at max_seq_len, tokenizer specials); return ids, answer masks, full lengths."""
    with_offsets = getattr(tokenizer, "is_fast", False)
    kwargs = dict(add_special_tokens=add_special_tokens, return_offsets_mapping=with_offsets, verbose=False)
    full = tokenizer(texts, **kwargs)
    ids, masks, lengths = [], [], []
    for i, text in enumerate(texts):
        enc = {key: full[key][i] for key in full.keys()}
        lengths.append(len(enc["input_ids"]))
        if lengths[-1] > max_seq_len:
            enc = tokenizer(text, max_length=max_seq_len, truncation=True, **kwargs)
        ids.append(list(enc["input_ids"]))
        offsets = enc["offset_mapping"] if with_offsets else [(0, 1)] * len(enc["input_ids"])
        masks.append(answer_token_mask(offsets, spans[i]) if with_offsets else [1] * len(offsets))
    return ids, masks, lengths


def sample_location(raw, sample, split_name: str, position: int) -> str:
    """Where a sample came from: its file and line for local data, else the dataset, split and position."""
    source = sample.get("source") if isinstance(sample, dict) else None
    return source or f"{raw.dataset_name} {split_name} split, sample {position + 1} of phase 1"


def tokenize_split(raw, rows, split_name: str, tokenizer, data: DataConfig, eot: str):
    """Tokenise one split of one dataset, counting what was dropped and truncated."""
    stats = report.SplitStats(dataset=raw.dataset_name, split=split_name)
    drop_reason = getattr(raw, "drop_reason", None)
    reasons: Counter = Counter()
    texts, spans = [], []
    if data.prompt_template == prompts.CHAT_TEMPLATE:
        prompts.require_chat_template(tokenizer)  # once, before any record is blamed for it
    for position, sample in enumerate(rows):
        stats.records += 1
        try:
            rendered = render_sample(raw, sample, data.prompt_template, tokenizer, eot)
        except DschatError as err:  # a record the chat template refuses: say which one
            raise DschatError(f"{sample_location(raw, sample, split_name, position)}: {err}") from None
        if rendered is None:
            reasons[(drop_reason(sample) if drop_reason else None) or "no prompt/answer"] += 1
            continue
        texts.append(rendered[0])
        spans.append(rendered[1])
    add_specials = prompts.adds_special_tokens(data.prompt_template)  # a chat template writes its own BOS
    ids, masks, lengths = [], [], []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        end = start + TOKENIZE_BATCH
        part = tokenize_texts(tokenizer, texts[start:end], spans[start:end], data.max_seq_len, add_specials)
        for total, chunk in zip((ids, masks, lengths), part):
            total.extend(chunk)
    stats.kept = len(ids)
    stats.truncated = sum(n > data.max_seq_len for n in lengths)
    stats.record_drops(reasons)
    stats.record_lengths(np.array(lengths))
    logger.info("Creating dataset %s for train_phase=1 size=%d", raw.dataset_name_clean, len(ids))
    return TokenizedSamples.from_lists(ids, masks), stats


def tokenize_source(name: str, data_split: str, tokenizer, data: DataConfig, eot: str):
    """One dataset's phase-1 part of its train and eval splits, tokenised (upstream's create_dataset)."""
    raw = get_raw_dataset(name, data.data_output_path, data.seed, dist.get_local_rank())
    rebuild = raw.dataset_name_clean == "jsonfile"  # upstream rebuilds this dataset's split every run
    sources = raw.get_train_data(), raw.get_eval_data()
    if data.clean is not None:
        sources = clean_source(raw, *sources, data, tokenizer)
    result = []
    for split_name, rows in zip(("train", "eval"), sources):
        index = splits.split_indices(
            data.data_output_path,
            raw.dataset_name_clean,
            data.seed,
            split_name,
            data_split,
            0,
            len(rows),
            rebuild,
        )
        selected = rows.select(index) if hasattr(rows, "select") else (rows[i] for i in index)
        result.append(tokenize_split(raw, selected, split_name, tokenizer, data, eot))
    (train, train_stats), (evaluation, eval_stats) = result
    return train, evaluation, [train_stats, eval_stats]


def weighted_selection(sizes: list[int], weights: list[float], seed: int) -> list[np.ndarray]:
    """Per-dataset sample indices so the blend follows ``weights``; its total size is the sum of ``sizes``.

    A dataset asked for more samples than it has is repeated whole, then topped up without replacement.
    """
    rng = np.random.RandomState(seed)
    total, weight_sum = sum(sizes), sum(weights)
    picks = []
    for size, weight in zip(sizes, weights):
        want = int(round(weight / weight_sum * total))
        if size == 0:
            picks.append(np.zeros(0, np.int64))
            continue
        repeats, rest = divmod(want, size)
        chosen = [np.arange(size)] * repeats + [rng.permutation(size)[:rest]]
        picks.append(np.concatenate(chosen).astype(np.int64))
    return picks


def blend(parts: list[TokenizedSamples], seed: int, weights=None) -> TokenizedSamples:
    """Concatenate datasets and reshuffle as upstream; with weights, resample to the stated proportions first."""
    if weights is not None:
        picks = weighted_selection([len(p) for p in parts], list(weights), seed)
        parts = [part.select(pick) for part, pick in zip(parts, picks)]
    combined = TokenizedSamples.concat(parts)
    return combined.select(splits.shuffle_indices(seed, len(combined)))


def build_phase1(data: DataConfig, tokenizer, eot: str):
    """Train and eval samples for phase 1: main datasets, blend, then SFT-only datasets (upstream's order)."""
    main = [tokenize_source(name, data.data_split, tokenizer, data, eot) for name in data.data_path]
    sft_only = [
        tokenize_source(name, splits.SFT_ONLY_SPLIT, tokenizer, data, eot) for name in data.sft_only_data_path
    ]
    stats = [item for source in main + sft_only for item in source[2]]
    if len(main) == 1 and data.data_weights is None:
        train, evaluation = main[0][0], main[0][1]
    else:
        train = blend([source[0] for source in main], data.seed, data.data_weights)
        evaluation = blend([source[1] for source in main], data.seed)
    if sft_only:
        train = blend([train] + [source[0] for source in sft_only], data.seed)
        evaluation = blend([evaluation] + [source[1] for source in sft_only], data.seed)
    return train, evaluation, stats


def check_data_config(data: DataConfig) -> None:
    """Problems create_prompt_dataset can see before reading any data."""
    if not data.data_path:
        raise DschatError("--data_path is empty: name at least one dataset (upstream requires it too)")
    splits.parse_data_split(data.data_split)
    if (problem := splits.data_weights_problem(data.data_weights, len(data.data_path))) is not None:
        raise DschatError(problem)


BUILD_FAILED = 2


def build_and_cache(data: DataConfig, tokenizer, eot: str, key: str, paths: list[str]):
    """Tokenise and split, check, then write the cache (train last: its presence marks a complete cache)."""
    train, evaluation, stats = build_phase1(data, tokenizer, eot)
    check_fits_positions([train, evaluation], data.max_seq_len, tokenizer.name_or_path)  # before caching
    meta = {"stats": report.stats_to_dicts(stats), "max_seq_len": data.max_seq_len, "key": key}
    evaluation.save(paths[1], meta)
    train.save(paths[0], meta)
    return [(train, meta), (evaluation, meta)]


def load_or_build(data: DataConfig, tokenizer, eot: str):
    """The cached phase-1 splits, built by local rank 0 of each node under a lock while the others wait.

    Returns ((train, meta), (eval, meta)) and whether this process built them.
    """
    os.makedirs(data.data_output_path, exist_ok=True)
    key = cache_key(data, tokenizer, eot)
    paths = [os.path.join(data.data_output_path, f"{kind}data_{key}.npz") for kind in ("train", "eval")]
    cached = None if data.reload_data else load_cached(paths)
    built, failure = False, None
    if cached is None and dist.get_local_rank() == 0:
        try:
            with file_lock(os.path.join(data.data_output_path, f".lock_{key}")):
                cached = (
                    None if data.reload_data else load_cached(paths)
                )  # another node may have built it meanwhile
                if cached is None:
                    cached, built = build_and_cache(data, tokenizer, eot, key, paths), True
        except Exception as err:  # still join the collective below, so the waiting ranks learn of it
            failure = err
    # Every rank waits here until each node's builder is done: 0 ready, 1 read the cache, 2 a build failed.
    worst = dist.all_reduce_max(BUILD_FAILED if failure else int(cached is None))
    if failure is not None:
        raise failure
    if worst == BUILD_FAILED:
        raise DschatError(
            "building the tokenised data failed on a node's local rank 0 (its error is in the log above): fix "
            "that and run again"
        )
    if worst:
        cached = load_cached(paths) if cached is None else cached
    if cached is None:
        raise DschatError(
            f"the tokenised data cache in {data.data_output_path} could not be read after it was built: "
            "check that --data_output_path is writable and not full"
        )
    return cached, built


def prepare_datasets(data: DataConfig, tokenizer) -> tuple[PromptDataset, PromptDataset]:
    """Phase-1 train and eval PromptDatasets for a run: checked, built once per node, cached, reported."""
    check_data_config(data)
    eot = tokenizer.eos_token  # upstream's end_of_conversation_token
    ((train, meta), (evaluation, _)), built = load_or_build(data, tokenizer, eot)
    if len(train) == 0:
        raise DschatError(
            f"phase 1 has no training samples after splitting {list(data.data_path)} with --data_split "
            f"{data.data_split}: use more data, a larger phase-1 weight (e.g. 10,0,0), or check that records "
            "are not all dropped"
        )
    check_trainable(train, data.train_on_prompt)
    check_fits_positions(
        [train, evaluation], data.max_seq_len, tokenizer.name_or_path
    )  # a cache built before
    if dist.get_rank() == 0:
        log_data_report(train, meta, tokenizer, data, built)
    return PromptDataset(train), PromptDataset(evaluation)


def log_data_report(train: TokenizedSamples, meta: dict, tokenizer, data: DataConfig, built: bool) -> None:
    """The data report, with the first sample's loss-bearing tokens marked."""
    ids, answer = train.sample(0)
    trained = np.ones_like(answer) if data.train_on_prompt else answer
    trained[0] = 0  # the first token is only ever an input, never a target
    sample_text = report.mark_loss_tokens(tokenizer, ids, trained)
    report.log_report(report.stats_from_dicts(meta["stats"]), data.max_seq_len, sample_text, not built)


def check_fits_positions(parts: list[TokenizedSamples], max_seq_len: int, model_dir: str) -> None:
    """Fail when a sample is longer than the model's learned position table (its forward pass would raise an
    IndexError, possibly hours into training, when the first such sample comes)."""
    if (limit := position_limit(model_dir)) is None:
        return
    key, positions = limit
    longest = max((int(part.lengths().max()) for part in parts if len(part)), default=0)
    if longest > positions:
        raise DschatError(
            f"--max_seq_len {max_seq_len} keeps samples of up to {longest} tokens, but the model has {positions} "
            f"positions ({key} in {os.path.join(model_dir, 'config.json')}). Fix: use --max_seq_len {positions} "
            "or less"
        )


def check_trainable(train: TokenizedSamples, train_on_prompt: bool) -> None:
    """Fail when a sample would contribute no target token to the loss (it would only waste compute)."""
    for index in range(len(train)):
        ids, answer = train.sample(index)
        targets = len(ids) - 1 if train_on_prompt else int(answer[1:].sum())
        if targets <= 0:
            what = "tokens" if train_on_prompt else "answer tokens (the prompt fills --max_seq_len)"
            raise DschatError(
                f"training sample {index} has no {what} to train on; raise --max_seq_len, "
                "drop samples whose prompt is too long, or train on prompts too"
            )


def create_prompt_dataset(
    local_rank,
    data_path,
    data_split,
    output_path,
    train_phase,
    seed,
    tokenizer,
    max_seq_len,
    end_of_conversation_token=None,
    sft_only_data_path=(),
    reload=False,
    prompt_template=prompts.UPSTREAM,
    data_weights=None,
    train_on_prompt=True,
):
    """Upstream's public entry point, kept for callers of upstream's API: the same arguments, phase 1 only.

    ``local_rank`` is ignored (the rank comes from the process group) and ``end_of_conversation_token`` must be
    the tokenizer's eos, as upstream's step 1 passes it.
    """
    if train_phase != 1:
        raise DschatError(
            f"train_phase={train_phase}: dschat implements step 1 (supervised fine-tuning) only"
        )
    if end_of_conversation_token not in (None, tokenizer.eos_token):
        raise DschatError(
            f"end_of_conversation_token={end_of_conversation_token!r}: step 1 ends samples with the tokenizer's "
            f"eos token {tokenizer.eos_token!r}"
        )
    data = DataConfig(
        data_path=tuple(data_path),
        data_split=data_split,
        sft_only_data_path=tuple(sft_only_data_path),
        data_output_path=output_path,
        max_seq_len=max_seq_len,
        seed=seed,
        prompt_template=prompt_template,
        data_weights=None if data_weights is None else tuple(data_weights),
        train_on_prompt=train_on_prompt,
        reload_data=reload,
    )
    return prepare_datasets(data, tokenizer)
