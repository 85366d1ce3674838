"""Phase-1 datasets as upstream builds them: split, tokenise, blend and cache (safely).

One rank per node (local rank 0) builds the cache while the others wait, as upstream; unlike upstream, files
are written under a lock to a temporary name and renamed when complete, the key covers the tokenizer's
identity and local data files, and the cache holds plain arrays (no pickle).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import numpy as np

from dschat.errors import DschatError
from dschat.utils import dist
from dschat.utils.data import prompts, report, splits
from dschat.utils.data.cache import cache_key, file_lock, load_cached
from dschat.utils.data.raw_datasets import get_raw_dataset
from dschat.utils.data.tokenized import PromptDataset, TokenizedSamples

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 512


def render_sample(raw, sample, prompt_template: str, tokenizer, end_of_conversation_token: str):
    """The training text of one raw sample and its answer character spans, or None to skip it."""
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


def build_split(raw, rows, split_name, tokenizer, max_seq_len, eot, prompt_template):
    """Tokenise one split of one dataset, counting what was dropped and truncated."""
    stats = report.SplitStats(dataset=raw.dataset_name, split=split_name)
    drop_reason = getattr(raw, "drop_reason", None)
    reasons: Counter = Counter()
    texts, spans = [], []
    for sample in rows:
        stats.records += 1
        rendered = render_sample(raw, sample, prompt_template, tokenizer, eot)
        if rendered is None:
            reasons[(drop_reason(sample) if drop_reason else None) or "no prompt/answer"] += 1
            continue
        texts.append(rendered[0])
        spans.append(rendered[1])
    add_specials = prompt_template != prompts.CHAT_TEMPLATE  # a chat template writes its own BOS
    ids, masks, lengths = [], [], []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        part = tokenize_texts(
            tokenizer,
            texts[start : start + TOKENIZE_BATCH],
            spans[start : start + TOKENIZE_BATCH],
            max_seq_len,
            add_specials,
        )
        for total, chunk in zip((ids, masks, lengths), part):
            total.extend(chunk)
    stats.kept = len(ids)
    stats.truncated = sum(n > max_seq_len for n in lengths)
    stats.record_drops(reasons)
    stats.record_lengths(np.array(lengths))
    logger.info("Creating dataset %s for train_phase=1 size=%d", raw.dataset_name_clean, len(ids))
    return TokenizedSamples.from_lists(ids, masks), stats


def create_dataset(
    local_rank,
    dataset_name,
    data_split,
    output_path,
    train_phase,
    seed,
    tokenizer,
    end_of_conversation_token,
    max_seq_len,
    prompt_template=prompts.UPSTREAM,
):
    """One dataset's phase partition of its train and eval splits, tokenised (upstream's create_dataset)."""
    raw = get_raw_dataset(dataset_name, output_path, seed, local_rank)
    rebuild = raw.dataset_name_clean == "jsonfile"  # upstream rebuilds this dataset's split every run
    result = []
    for split_name, data in (("train", raw.get_train_data()), ("eval", raw.get_eval_data())):
        index = splits.split_indices(
            output_path,
            raw.dataset_name_clean,
            seed,
            split_name,
            data_split,
            train_phase - 1,
            len(data),
            rebuild,
        )
        rows = data.select(index) if hasattr(data, "select") else (data[i] for i in index)
        result.append(
            build_split(
                raw, rows, split_name, tokenizer, max_seq_len, end_of_conversation_token, prompt_template
            )
        )
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


def blend(parts: list[TokenizedSamples], seed: int, weights: list[float] | None = None) -> TokenizedSamples:
    """Concatenate datasets and reshuffle as upstream; with weights, resample to the stated proportions first."""
    if weights is not None:
        picks = weighted_selection([len(p) for p in parts], weights, seed)
        parts = [part.select(pick) for part, pick in zip(parts, picks)]
    combined = TokenizedSamples.concat(parts)
    return combined.select(splits.shuffle_indices(seed, len(combined)))


def build_phase1(
    local_rank,
    data_path,
    data_split,
    output_path,
    seed,
    tokenizer,
    max_seq_len,
    eot,
    sft_only_data_path,
    prompt_template,
    data_weights,
):
    """Build train and eval samples for phase 1: main datasets, blend, then SFT-only datasets (upstream order)."""
    trains, evals, stats = [], [], []
    for name in data_path:
        train, evaluation, split_stats = create_dataset(
            local_rank, name, data_split, output_path, 1, seed, tokenizer, eot, max_seq_len, prompt_template
        )
        trains.append(train)
        evals.append(evaluation)
        stats += split_stats
    if len(data_path) == 1 and data_weights is None:
        train, evaluation = trains[0], evals[0]
    else:
        train, evaluation = blend(trains, seed, data_weights), blend(evals, seed)
    sft_trains, sft_evals = [], []
    for name in sft_only_data_path:
        sft_train, sft_eval, split_stats = create_dataset(
            local_rank,
            name,
            splits.SFT_ONLY_SPLIT,
            output_path,
            1,
            seed,
            tokenizer,
            eot,
            max_seq_len,
            prompt_template,
        )
        sft_trains.append(sft_train)
        sft_evals.append(sft_eval)
        stats += split_stats
    if sft_trains:
        train = blend([train] + sft_trains, seed)
    if sft_evals:
        evaluation = blend([evaluation] + sft_evals, seed)
    return train, evaluation, stats


def create_prompt_dataset(
    local_rank,
    data_path,
    data_split,
    output_path,
    train_phase,
    seed,
    tokenizer,
    max_seq_len,
    end_of_conversation_token,
    sft_only_data_path=(),
    reload=False,
    prompt_template=prompts.UPSTREAM,
    data_weights=None,
    train_on_prompt=True,
):
    """Phase-1 train and eval PromptDatasets, built once per node and cached (upstream's create_prompt_dataset)."""
    if train_phase != 1:
        raise DschatError(
            f"train_phase={train_phase}: dschat implements step 1 (supervised fine-tuning) only"
        )
    if not data_path:
        raise DschatError("--data_path is empty: name at least one dataset (upstream requires it too)")
    splits.parse_data_split(data_split)
    if data_weights is not None and len(data_weights) != len(data_path):
        raise DschatError(
            f"--data_weights has {len(data_weights)} values for {len(data_path)} --data_path entries"
        )
    data_path, sft_only_data_path = list(data_path), list(sft_only_data_path)
    os.makedirs(output_path, exist_ok=True)
    key = cache_key(
        data_path,
        data_split,
        train_phase,
        seed,
        tokenizer,
        max_seq_len,
        sft_only_data_path,
        end_of_conversation_token,
        prompt_template,
        data_weights,
    )
    paths = [os.path.join(output_path, f"{kind}data_{key}.npz") for kind in ("train", "eval")]
    cached = None if reload else load_cached(paths)
    built = False
    if cached is None and local_rank <= 0:
        with file_lock(os.path.join(output_path, f".lock_{key}")):
            cached = None if reload else load_cached(paths)  # another node may have built it meanwhile
            if cached is None:
                train, evaluation, stats = build_phase1(
                    local_rank,
                    data_path,
                    data_split,
                    output_path,
                    seed,
                    tokenizer,
                    max_seq_len,
                    end_of_conversation_token,
                    sft_only_data_path,
                    prompt_template,
                    data_weights,
                )
                meta = {"stats": report.stats_to_dicts(stats), "max_seq_len": max_seq_len, "key": key}
                evaluation.save(paths[1], meta)
                train.save(paths[0], meta)  # written last: its presence marks a complete cache
                cached, built = [(train, meta), (evaluation, meta)], True
    if dist.all_reduce_max(int(cached is None)):  # every rank waits here until each node's builder is done
        cached = load_cached(paths) if cached is None else cached
    if cached is None:
        raise DschatError(
            f"the tokenised data cache in {output_path} could not be read after it was built: "
            "check that --data_output_path is writable and not full"
        )
    (train, meta), (evaluation, _) = cached
    if len(train) == 0:
        raise DschatError(
            f"phase 1 has no training samples after splitting {data_path} with --data_split {data_split}: "
            "use more data, a larger phase-1 weight (e.g. 10,0,0), or check that records are not all dropped"
        )
    check_trainable(train, train_on_prompt)
    if dist.get_rank() == 0:
        ids, answer = train.sample(0)
        trained = np.ones_like(answer) if train_on_prompt else answer
        trained[0] = 0  # the first token is only ever an input, never a target
        sample_text = report.mark_loss_tokens(tokenizer, ids, trained)
        report.log_report(report.stats_from_dicts(meta["stats"]), max_seq_len, sample_text, not built)
    return PromptDataset(train), PromptDataset(evaluation)


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


def create_phase1_datasets(args, tokenizer):
    """create_prompt_dataset with main.py's flag names (shared by main.py, prepare_data and --dry_run)."""
    return create_prompt_dataset(
        args.local_rank if hasattr(args, "local_rank") else 0,
        args.data_path,
        args.data_split,
        args.data_output_path,
        1,
        args.seed,
        tokenizer,
        args.max_seq_len,
        end_of_conversation_token=tokenizer.eos_token,
        sft_only_data_path=args.sft_only_data_path,
        reload=args.reload_data,
        prompt_template=args.prompt_template,
        data_weights=args.data_weights,
        train_on_prompt=args.train_on_prompt,
    )
