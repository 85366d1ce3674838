"""The step-1 training machinery: loaders, engine, evaluation and the training loop (upstream's maths)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass

import deepspeed
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from dschat.errors import DschatError
from dschat.utils import checkpoint, dist, perf
from dschat.utils.data.collate import IGNORE_INDEX, REAL_TOKENS

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def create_engine(model, optimizer, lr_scheduler, ds_config: dict, args):
    """Wrap model, optimizer and schedule in a DeepSpeed engine (the only deepspeed.initialize call)."""
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, args=args, config=ds_config, lr_scheduler=lr_scheduler
    )
    if args.gradient_checkpointing:
        # transformers 5 renamed upstream's gradient_checkpointing_enable (now a deprecated alias).
        module = engine.module
        enable = getattr(module, "activation_checkpointing_enable", module.gradient_checkpointing_enable)
        enable()
    return engine


def to_device(batch: dict, device) -> tuple[dict, int]:
    """Model inputs on ``device``, and the batch's count of real (non-pad) tokens."""
    real_tokens = int(batch.get(REAL_TOKENS, batch["input_ids"].numel()))
    return {key: value.to(device) for key, value in batch.items() if key != REAL_TOKENS}, real_tokens


def count_targets(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the causal shift (labels[:, 1:] that are not -100)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class EvalResult:
    """Upstream's perplexity (mean of batch means, rank-averaged) and the token-weighted one beside it."""

    perplexity: float
    loss: float
    token_perplexity: float
    token_loss: float


def safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return float("inf")


def evaluate(engine, eval_loader, device) -> EvalResult | None:
    """Eval loss and perplexity as upstream, plus the token-weighted values; None for an empty eval set."""
    if len(eval_loader) == 0:
        logger.warning("the eval set is empty: skipping evaluation")
        return None
    engine.eval()
    batch_losses = torch.zeros((), dtype=torch.float32, device=device)
    token_sums = torch.zeros(2, dtype=torch.float64, device=device)  # sum of token losses, token count
    for batch in eval_loader:
        batch, _ = to_device(batch, device)
        with torch.no_grad():
            loss = engine(**batch, use_cache=False).loss.float()
        targets = count_targets(batch["labels"])
        batch_losses += loss
        token_sums += torch.tensor([loss.item() * targets, targets], dtype=torch.float64, device=device)
    mean_loss = dist.all_reduce_mean(batch_losses / len(eval_loader)).item()
    if dist.is_distributed():
        torch.distributed.all_reduce(token_sums)
    token_loss = (token_sums[0] / token_sums[1].clamp(min=1)).item()
    return EvalResult(safe_exp(mean_loss), mean_loss, safe_exp(token_loss), token_loss)


def log_eval(result: EvalResult | None, epoch: int, num_epochs: int) -> None:
    if result is not None:
        logger.info(
            "ppl: %s, loss: %s (epoch=%d/%d token_weighted_ppl=%.4f token_weighted_loss=%.4f)",
            result.perplexity,
            result.loss,
            epoch,
            num_epochs,
            result.token_perplexity,
            result.token_loss,
        )


class MetricsWriter:
    """Per-step JSON lines in the output dir (rank 0), so runs can be plotted and compared.

    A resumed run keeps the rows up to its checkpoint (``keep_steps``) and continues the file.
    """

    def __init__(self, output_dir: str | None, keep_steps: int | None = None):
        self.handle = None
        if output_dir and dist.get_rank() == 0:
            os.makedirs(output_dir, exist_ok=True)
            path = os.path.join(output_dir, METRICS_FILE)
            kept = []
            if keep_steps is not None and os.path.isfile(path):
                with open(path) as old:
                    kept = [line for line in old if json.loads(line)["step"] <= keep_steps]
            self.handle = open(path, "w")
            self.handle.writelines(kept)

    def write(self, **row) -> None:
        if self.handle:
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


class SkipSampler(Sampler[int]):
    """The wrapped sampler's indices after the first ``skip`` (a resumed epoch continues where it stopped)."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)


class StopRequest:
    """SIGTERM/SIGINT ask for a clean stop after the current step; a second signal acts immediately."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self.handle)

    def handle(self, signum, frame) -> None:
        logger.warning(
            "received signal %d: finishing this step, then saving a checkpoint and exiting", signum
        )
        self.requested = True
        signal.signal(signum, self.previous.get(signum) or signal.SIG_DFL)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler or signal.SIG_DFL)


def agree(loss: torch.Tensor, stop_requested: bool) -> tuple[float, bool, bool]:
    """One collective per step: the rank-mean loss, whether any rank's loss is not finite, whether any rank
    must stop. Every rank takes the same decision, so none is left waiting in a collective."""
    finite = bool(torch.isfinite(loss.detach()).all())
    flags = torch.tensor([loss.detach().float().item() if finite else 0.0, float(not finite), float(stop_requested)],
                         dtype=torch.float64, device=loss.device)  # fmt: skip
    if dist.is_distributed():
        torch.distributed.all_reduce(flags)
    return flags[0].item() / dist.get_world_size(), flags[1].item() > 0, flags[2].item() > 0


def epoch_loader(train_loader, state, resume_dir: str | None, epoch: int):
    """This epoch's batches; a resumed epoch skips what was trained and restores the RNG after the iterator
    is made (making it draws a seed, as the uninterrupted run did at the epoch's start)."""
    if resume_dir is None or epoch != state.epoch or state.step_in_epoch == 0:
        return iter(train_loader), 0
    skip = state.step_in_epoch * train_loader.batch_size
    loader = DataLoader(train_loader.dataset, batch_size=train_loader.batch_size, collate_fn=train_loader.collate_fn,
                        sampler=SkipSampler(train_loader.sampler, skip))  # fmt: skip
    iterator = iter(loader)
    checkpoint.restore_rng(resume_dir)
    return iterator, state.step_in_epoch


def nonfinite_loss(state, args, epoch: int, step: int) -> None:
    """Skip a bounded number of bad steps (``--max_bad_steps``), else stop naming the step and what is kept."""
    state.bad_steps += 1
    where = f"epoch {epoch + 1} micro-step {step} (update {state.update_step + 1})"
    if state.bad_steps <= args.max_bad_steps:
        logger.warning("non-finite loss at %s: skipping it (%d of --max_bad_steps %d)", where, state.bad_steps,
                       args.max_bad_steps)  # fmt: skip
        return
    kept = (
        checkpoint.latest_checkpoint(checkpoint.checkpoints_root(args.output_dir))
        if args.output_dir
        else None
    )
    raise DschatError(
        f"the loss became NaN/inf at {where}; nothing new was saved"
        + (f", the last good checkpoint is {kept}" if kept else "")
        + ". Lower --learning_rate, add --num_warmup_steps, check the data, or allow skipping with --max_bad_steps N"
    )


@dataclass
class Loop:
    """What every step of a run needs: the engine, flags, where metrics go, the stop request."""

    engine: object
    args: object
    device: torch.device
    eval_loader: object
    metrics: MetricsWriter
    stop: StopRequest
    dims: tuple[int, int, int]
    num_params: int


def micro_step(loop: Loop, state, batch, epoch: int, step: int) -> tuple[bool, bool, float, float]:
    """Forward, one agreement across ranks, backward and step (a bad loss is skipped or stops the run),
    bookkeeping. Returns (stop requested, this was an optimizer update, rank-mean loss, learning rate)."""
    engine, args = loop.engine, loop.args
    start = time.time()
    batch, real_tokens = to_device(batch, loop.device)
    lr = engine.get_lr()[0]  # the rate this step's update uses
    loss = engine(**batch, use_cache=False).loss
    if args.print_loss:
        print(f"Epoch: {epoch}, Step: {step}, Rank: {dist.get_rank()}, loss = {loss}", flush=True)
    mean_loss, bad, stopping = agree(loss, loop.stop.requested)
    if bad:
        nonfinite_loss(state, args, epoch, step)
    else:
        engine.backward(loss)
        engine.step()
    seconds = time.time() - start
    boundary = engine.global_steps != state.update_step
    state.micro_step += 1
    state.step_in_epoch = step + 1
    state.tokens_seen += real_tokens
    state.update_step = engine.global_steps
    loop.metrics.write(epoch=epoch, step=state.micro_step, update_step=state.update_step, loss=mean_loss, lr=lr,
                       tokens=real_tokens, loss_tokens=count_targets(batch["labels"]),
                       padded_tokens=batch["input_ids"].numel(), tokens_seen=state.tokens_seen,
                       time=round(seconds, 6))  # fmt: skip
    if dist.get_rank() == 0 and state.micro_step % args.log_interval == 0:
        log_throughput(
            args, batch, seconds, real_tokens, loop.dims, loop.num_params, state.micro_step, mean_loss, lr
        )
    return stopping, boundary, mean_loss, lr


def train_epoch(loop: Loop, state, train_loader, resume_dir: str | None, epoch: int) -> str:
    """Every remaining micro-batch of one epoch; returns "done", "max_steps" or "interrupted"."""
    args, engine = loop.args, loop.engine
    if args.shuffle_each_epoch:
        train_loader.sampler.set_epoch(epoch)
    engine.train()
    batches, first = epoch_loader(train_loader, state, resume_dir, epoch)
    state.epoch, state.step_in_epoch = epoch, first
    bar = tqdm(batches, total=len(train_loader), initial=first, desc=f"epoch {epoch + 1}/{args.num_train_epochs}",
               disable=dist.get_rank() != 0, dynamic_ncols=True)  # fmt: skip
    for step, batch in enumerate(bar, start=first):
        stopping, boundary, loss, lr = micro_step(loop, state, batch, epoch, step)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if args.eval_interval and state.micro_step % args.eval_interval == 0:
            log_eval(evaluate(engine, loop.eval_loader, loop.device), epoch + 1, args.num_train_epochs)
            engine.train()
        periodic = args.save_interval and state.update_step % args.save_interval == 0
        if boundary and args.output_dir and (stopping or periodic):
            checkpoint.save_checkpoint(engine, args.output_dir, state, args.save_total_limit)
        if stopping and boundary:
            return "interrupted"
        if args.max_steps and state.update_step >= args.max_steps:
            return "max_steps"
    return "done"


def train(engine, train_loader, eval_loader, args, model_config, device, state, resume_dir=None) -> str:
    """Upstream's loop (eval before training, then per epoch train every micro-batch and eval again), plus
    checkpoints, exact resume, clean stops and a NaN guard. Returns "done", "max_steps" or "interrupted"."""
    metrics = MetricsWriter(args.output_dir, keep_steps=state.micro_step if resume_dir else None)
    loop = Loop(engine, args, device, eval_loader, metrics, StopRequest(), perf.get_hf_configs(model_config),
                perf.count_parameters(engine.module))  # fmt: skip
    logger.info("***** Running training *****")
    if resume_dir is None:
        logger.info("***** Evaluating perplexity, Epoch 0/%d *****", args.num_train_epochs)
        log_eval(evaluate(engine, eval_loader, device), 0, args.num_train_epochs)
    outcome = "done"
    for epoch in range(state.epoch, args.num_train_epochs):
        logger.info("Beginning of Epoch %d/%d, Total Micro Batches %d", epoch + 1, args.num_train_epochs,
                    len(train_loader))  # fmt: skip
        outcome = train_epoch(loop, state, train_loader, resume_dir, epoch)
        if outcome == "interrupted":
            break
        state.step_in_epoch = len(train_loader)
        logger.info("***** Evaluating perplexity, Epoch %d/%d *****", epoch + 1, args.num_train_epochs)
        log_eval(evaluate(engine, eval_loader, device), epoch + 1, args.num_train_epochs)
        engine.tput_timer.update_epoch_count()
        if outcome == "max_steps":
            logger.info("stopping after max_steps=%d optimizer updates", args.max_steps)
            break
        state.epoch, state.step_in_epoch = epoch + 1, 0
    loop.stop.restore()
    metrics.close()
    return outcome


def log_throughput(args, batch, seconds, real_tokens, dims, num_params, micro_step, loss, lr) -> None:
    """Upstream's throughput line (TFLOPs per device) and the same numbers as key=value."""
    layers, hidden, vocab = dims
    tput = perf.compute_throughput(
        latency_s=seconds, batch_size=batch["input_ids"].shape[0], seq_len=batch["input_ids"].shape[1],
        num_tokens=real_tokens, num_layers=layers, hidden_size=hidden, vocab_size=vocab,
        world_size=dist.get_world_size(), gradient_checkpointing=args.gradient_checkpointing,
        lora_dim=args.lora_dim, num_params=num_params,
    )  # fmt: skip
    logger.info(perf.format_upstream_line(tput))
    logger.info("step=%d loss=%.6f lr=%.3e %s", micro_step, loss, lr, perf.format_metrics(tput))
