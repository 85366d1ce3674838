"""The step-1 training machinery: loaders, engine, evaluation and the training loop (upstream's maths)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass

import deepspeed
import torch
from tqdm import tqdm

from dschat.utils import dist, perf
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
    """Per-step JSON lines in the output dir (rank 0), so runs can be plotted and compared."""

    def __init__(self, output_dir: str | None):
        self.handle = None
        if output_dir and dist.get_rank() == 0:
            os.makedirs(output_dir, exist_ok=True)
            self.handle = open(os.path.join(output_dir, METRICS_FILE), "w")

    def write(self, **row) -> None:
        if self.handle:
            self.handle.write(json.dumps(row) + "\n")
            self.handle.flush()

    def close(self) -> None:
        if self.handle:
            self.handle.close()


@dataclass
class LoopState:
    micro_step: int = 0
    update_step: int = 0
    tokens_seen: int = 0
    stopped: bool = False


def train_step(engine, batch, args, epoch: int, step: int) -> torch.Tensor:
    """Forward, backward and step on one micro-batch; DeepSpeed updates on accumulation boundaries."""
    loss = engine(**batch, use_cache=False).loss
    if args.print_loss:
        print(f"Epoch: {epoch}, Step: {step}, Rank: {dist.get_rank()}, loss = {loss}", flush=True)
    engine.backward(loss)
    engine.step()
    return loss


def train(engine, train_loader, eval_loader, args, model_config, device) -> LoopState:
    """Upstream's loop: eval before training, then per epoch train every micro-batch and eval again."""
    rank = dist.get_rank()
    state, metrics = LoopState(), MetricsWriter(args.output_dir)
    logger.info("***** Running training *****")
    logger.info("***** Evaluating perplexity, Epoch 0/%d *****", args.num_train_epochs)
    log_eval(evaluate(engine, eval_loader, device), 0, args.num_train_epochs)
    layers, hidden, vocab = perf.get_hf_configs(model_config)
    num_params = perf.count_parameters(engine.module)
    for epoch in range(args.num_train_epochs):
        logger.info(
            "Beginning of Epoch %d/%d, Total Micro Batches %d",
            epoch + 1,
            args.num_train_epochs,
            len(train_loader),
        )
        if args.shuffle_each_epoch:
            train_loader.sampler.set_epoch(epoch)
        engine.train()
        bar = tqdm(
            train_loader,
            desc=f"epoch {epoch + 1}/{args.num_train_epochs}",
            disable=rank != 0,
            dynamic_ncols=True,
        )
        for step, batch in enumerate(bar):
            start = time.time()
            batch, real_tokens = to_device(batch, device)
            lr = engine.get_lr()[0]  # the rate this step's update uses
            loss = train_step(engine, batch, args, epoch, step)
            mean_loss = dist.all_reduce_mean(loss.detach().float().clone()).item()
            seconds = time.time() - start
            state.micro_step += 1
            state.tokens_seen += real_tokens
            state.update_step = engine.global_steps
            metrics.write(
                epoch=epoch,
                step=state.micro_step,
                update_step=state.update_step,
                loss=mean_loss,
                lr=lr,
                tokens=real_tokens,
                loss_tokens=count_targets(batch["labels"]),
                padded_tokens=batch["input_ids"].numel(),
                tokens_seen=state.tokens_seen,
                time=round(seconds, 6),
            )
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            if rank == 0 and state.micro_step % args.log_interval == 0:
                tput = perf.compute_throughput(
                    latency_s=seconds,
                    batch_size=batch["input_ids"].shape[0],
                    seq_len=batch["input_ids"].shape[1],
                    num_tokens=real_tokens,
                    num_layers=layers,
                    hidden_size=hidden,
                    vocab_size=vocab,
                    world_size=dist.get_world_size(),
                    gradient_checkpointing=args.gradient_checkpointing,
                    lora_dim=args.lora_dim,
                    num_params=num_params,
                )
                logger.info(perf.format_upstream_line(tput))
                logger.info(
                    "step=%d loss=%.6f lr=%.3e %s", state.micro_step, mean_loss, lr, perf.format_metrics(tput)
                )
            if args.eval_interval and state.micro_step % args.eval_interval == 0:
                log_eval(evaluate(engine, eval_loader, device), epoch + 1, args.num_train_epochs)
                engine.train()
            if args.max_steps and state.update_step >= args.max_steps:
                state.stopped = True
                break
        logger.info("***** Evaluating perplexity, Epoch %d/%d *****", epoch + 1, args.num_train_epochs)
        log_eval(evaluate(engine, eval_loader, device), epoch + 1, args.num_train_epochs)
        engine.tput_timer.update_epoch_count()
        if state.stopped:
            logger.info("stopping after max_steps=%d optimizer updates", args.max_steps)
            break
    metrics.close()
    return state
