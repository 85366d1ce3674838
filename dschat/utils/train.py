"""The step-1 loop: engine, evaluation, one micro-step, one epoch, the run (upstream's maths).

Stops and the NaN guard live in ``guards``, metrics and throughput lines in ``metrics``, resumed-epoch
loaders in ``loaders``, checkpoints in ``checkpoint``.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass

import deepspeed
import torch
from tqdm import tqdm

from dschat.config import TrainConfig
from dschat.utils import checkpoint, dist, loss_normalization, perf
from dschat.utils.data.collate import REAL_TOKENS
from dschat.utils.guards import StopRequest, agree, nonfinite_loss
from dschat.utils.loaders import skip_batches
from dschat.utils.loss_normalization import TokenWindow, count_targets
from dschat.utils.metrics import EvalResult, MetricsWriter, ModelShape, log_eval, log_throughput

logger = logging.getLogger(__name__)


class Outcome(enum.Enum):
    """How a run's loop ended."""

    DONE = "done"  # every epoch trained
    MAX_STEPS = "max_steps"  # --max_steps reached
    INTERRUPTED = "interrupted"  # SIGTERM/SIGINT: a checkpoint was written, resume with --resume


def create_engine(model, optimizer, lr_scheduler, ds_config: dict, gradient_checkpointing: bool):
    """Wrap model, optimizer and schedule in a DeepSpeed engine (the only deepspeed.initialize call)."""
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config, lr_scheduler=lr_scheduler
    )
    if gradient_checkpointing:
        # transformers 5 renamed upstream's gradient_checkpointing_enable (now a deprecated alias).
        module = engine.module
        enable = getattr(module, "activation_checkpointing_enable", module.gradient_checkpointing_enable)
        enable()
    return engine


def to_device(batch: dict, device) -> tuple[dict, int]:
    """Model inputs on ``device``, and the batch's count of real (non-pad) tokens."""
    real_tokens = int(batch.get(REAL_TOKENS, batch["input_ids"].numel()))
    return {key: value.to(device) for key, value in batch.items() if key != REAL_TOKENS}, real_tokens


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


@dataclass
class Loop:
    """What every step of a run needs: the engine, the run's config, where metrics go, the stop request."""

    engine: object
    cfg: TrainConfig
    device: torch.device
    eval_loader: object
    metrics: MetricsWriter
    stop: StopRequest
    shape: ModelShape

    @property
    def scope(self) -> str:
        """Which tokens eval perplexity covers (what the loss is computed on)."""
        return "all_tokens" if self.cfg.data.train_on_prompt else "answer_tokens"


def evaluate_and_log(loop: Loop, state, epoch: int) -> None:
    """Evaluate, log upstream's line and add a row to eval.jsonl (``epoch``: epochs completed, as upstream)."""
    result = evaluate(loop.engine, loop.eval_loader, loop.device)
    log_eval(result, epoch, loop.cfg.optim.num_train_epochs, loop.scope)
    loop.metrics.write_eval(result, epoch=epoch, step=state.micro_step, update_step=state.update_step)


@dataclass(frozen=True)
class StepResult:
    """One micro-step: its rank-mean loss and LR, whether it ended an optimizer update, whether to stop."""

    loss: float
    lr: float
    update_boundary: bool
    stop_requested: bool


def forward(engine, batch: dict, window: TokenWindow | None) -> torch.Tensor:
    """The micro-batch's loss: its own token mean (upstream), or its share of the step's token mean (token)."""
    if window is None:
        return engine(**batch, use_cache=False).loss
    # The step ends with its window, not by DeepSpeed's micro-step count: an epoch's shorter last window too.
    engine.set_gradient_accumulation_boundary(window.last)
    return engine(**batch, use_cache=False, num_items_in_batch=window.num_items).loss


def micro_step(loop: Loop, state, batch, epoch: int, step: int, window: TokenWindow | None) -> StepResult:
    """Forward, one agreement across ranks, backward and step (a bad loss is skipped or stops the run),
    bookkeeping. ``window``: the step's token counts (--loss_normalization token), None for upstream's loss."""
    engine, cfg = loop.engine, loop.cfg
    start = time.time()
    batch, real_tokens = to_device(batch, loop.device)
    lr = engine.get_lr()[0]  # the rate this step's update uses
    loss = forward(engine, batch, window)
    if cfg.loop.print_loss:
        print(f"Epoch: {epoch}, Step: {step}, Rank: {dist.get_rank()}, loss = {loss}", flush=True)
    mean_loss, bad, stopping = agree(loss, loop.stop.requested)
    if bad:
        where = f"epoch {epoch + 1} micro-step {step} (update {state.update_step + 1})"
        nonfinite_loss(state, cfg.loop.max_bad_steps, cfg.output.output_dir, where)
    else:  # token: skipping a window's last micro-batch carries the window's gradients into the next step
        engine.backward(loss if window is None else loss * window.backward_scale)
        engine.step()
    if window is not None:
        mean_loss = window.step_loss(mean_loss * dist.get_world_size())
    seconds = time.time() - start
    boundary = engine.global_steps != state.update_step
    state.micro_step += 1
    state.step_in_epoch = step + 1
    state.tokens_seen += real_tokens
    state.update_step = engine.global_steps
    loop.metrics.write(
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
    if dist.get_rank() == 0 and state.micro_step % cfg.loop.log_interval == 0:
        input_shape = tuple(batch["input_ids"].shape)
        log_throughput(loop.shape, input_shape, seconds, real_tokens, state.micro_step, mean_loss, lr)
    return StepResult(mean_loss, lr, boundary, stopping)


def epoch_batches(train_loader, state, resume_dir: str | None, epoch: int):
    """This epoch's batches and the index of the first; a resumed epoch skips what was trained and restores
    the RNG after the iterator is made (making it draws a seed, as the uninterrupted run did)."""
    if resume_dir is None or epoch != state.epoch or state.step_in_epoch == 0:
        return iter(train_loader), 0
    iterator = iter(skip_batches(train_loader, state.step_in_epoch))
    checkpoint.restore_rng(resume_dir)
    return iterator, state.step_in_epoch


def epoch_length(train_loader, state, cfg: TrainConfig, first: int) -> int:
    """Micro-batches this epoch will run: all of them, or up to where --max_steps stops the run (bar and ETA)."""
    total = len(train_loader)
    if cfg.loop.max_steps:
        updates_left = max(cfg.loop.max_steps - state.update_step, 0)
        total = min(total, first + updates_left * cfg.batch.gradient_accumulation_steps)
    return total


def train_epoch(loop: Loop, state, train_loader, resume_dir: str | None, epoch: int) -> Outcome:
    """Every remaining micro-batch of one epoch."""
    cfg, engine = loop.cfg, loop.engine
    if cfg.batch.shuffle_each_epoch:
        train_loader.sampler.set_epoch(epoch)
    engine.train()
    batches, first = epoch_batches(train_loader, state, resume_dir, epoch)
    state.epoch, state.step_in_epoch = epoch, first
    bar = tqdm(
        total=epoch_length(train_loader, state, cfg, first),
        initial=first,
        desc=f"epoch {epoch + 1}/{cfg.optim.num_train_epochs}",
        disable=dist.get_rank() != 0,
        dynamic_ncols=True,
    )
    with bar:
        return train_batches(loop, state, batches, bar, first, epoch)


def train_batches(loop: Loop, state, batches, bar, first: int, epoch: int) -> Outcome:
    """The micro-steps of one epoch, with evaluation, checkpoints and stops where they fall due."""
    cfg, engine = loop.cfg, loop.engine
    for step, (batch, window) in enumerate(with_windows(loop, batches), start=first):
        result = micro_step(loop, state, batch, epoch, step, window)
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}")
        if cfg.loop.eval_interval and state.micro_step % cfg.loop.eval_interval == 0:
            evaluate_and_log(loop, state, epoch + 1)
            engine.train()
        periodic = cfg.loop.save_interval and state.update_step % cfg.loop.save_interval == 0
        if result.update_boundary and cfg.output.output_dir and (result.stop_requested or periodic):
            checkpoint.save_checkpoint(engine, cfg.output.output_dir, state, cfg.loop.save_total_limit)
        if result.stop_requested and result.update_boundary:
            return Outcome.INTERRUPTED
        if cfg.loop.max_steps and state.update_step >= cfg.loop.max_steps:
            return Outcome.MAX_STEPS
    return Outcome.DONE


def with_windows(loop: Loop, batches):
    """The micro-batches, each with its step's token window (--loss_normalization token) or None (upstream)."""
    if loop.cfg.batch.loss_normalization != "token":
        return ((batch, None) for batch in batches)
    scale = loss_normalization.backward_scale(loop.engine)
    gas = loop.cfg.batch.gradient_accumulation_steps
    return loss_normalization.token_windows(batches, gas, scale, loop.device)


def model_shape(engine, model_config, cfg: TrainConfig) -> ModelShape:
    layers, hidden, vocab = perf.get_hf_configs(model_config)
    return ModelShape(
        layers,
        hidden,
        vocab,
        perf.count_parameters(engine.module),
        cfg.model.gradient_checkpointing,
        cfg.lora.lora_dim,
    )


def train(
    engine, train_loader, eval_loader, cfg: TrainConfig, model_config, device, state, resume_dir=None
) -> Outcome:
    """Upstream's loop (eval before training, then per epoch train every micro-batch and eval again), plus
    checkpoints, exact resume, clean stops and a NaN guard."""
    if cfg.batch.loss_normalization == "token":
        loss_normalization.check_model(engine.module)
    metrics = MetricsWriter(cfg.output.output_dir, keep_steps=state.micro_step if resume_dir else None)
    loop = Loop(
        engine, cfg, device, eval_loader, metrics, StopRequest(), model_shape(engine, model_config, cfg)
    )
    try:  # the signal handlers and the metrics files are released however the loop ends
        return run_epochs(loop, state, train_loader, resume_dir)
    finally:
        loop.stop.restore()
        metrics.close()


def run_epochs(loop: Loop, state, train_loader, resume_dir: str | None) -> Outcome:
    """The epochs from ``state`` on, with an evaluation before (fresh runs) and after each."""
    cfg, engine, epochs = loop.cfg, loop.engine, loop.cfg.optim.num_train_epochs
    logger.info("***** Running training *****")
    if resume_dir is None:
        logger.info("***** Evaluating perplexity, Epoch 0/%d *****", epochs)
        evaluate_and_log(loop, state, 0)
    if cfg.loop.max_steps and state.update_step >= cfg.loop.max_steps:
        logger.info("nothing to train: the checkpoint is at update_step=%d = --max_steps", state.update_step)
        return Outcome.MAX_STEPS
    outcome = Outcome.DONE
    for epoch in range(state.epoch, epochs):
        logger.info("Beginning of Epoch %d/%d, Total Micro Batches %d", epoch + 1, epochs, len(train_loader))
        outcome = train_epoch(loop, state, train_loader, resume_dir, epoch)
        if outcome is Outcome.INTERRUPTED:
            break
        state.step_in_epoch = len(train_loader)
        logger.info("***** Evaluating perplexity, Epoch %d/%d *****", epoch + 1, epochs)
        evaluate_and_log(loop, state, epoch + 1)
        engine.tput_timer.update_epoch_count()
        if outcome is Outcome.MAX_STEPS:
            logger.info("stopping after max_steps=%d optimizer updates", cfg.loop.max_steps)
            break
        state.epoch, state.step_in_epoch = epoch + 1, 0
    return outcome
