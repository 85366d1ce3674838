"""Mid-training checkpoints that never lie: atomic DeepSpeed checkpoints plus everything exact resume needs.

Layout: ``<output_dir>/checkpoints/step<N>/`` holds DeepSpeed's files (model, optimizer, scheduler), every
rank's RNG states (JSON + safetensors, no pickle), ``dschat_state.json`` (counters, data position and the
run's fingerprint) and, written last, ``dschat_manifest.json`` (every file's size and sha256). A checkpoint is
written under a temporary name, renamed when every rank is done, and only then does ``latest`` point at it: a
kill at any moment leaves the previous checkpoint intact and trusted. Resuming verifies the manifest before
anything is read, passes over damaged checkpoints to the newest intact one, and follows ``latest`` only to a
``step<N>`` inside the same directory.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dschat.config import OutputConfig
from dschat.errors import DschatError
from dschat.run_dir import CHECKPOINTS_DIR
from dschat.utils import atomic, dist, manifest, reshape

logger = logging.getLogger(__name__)

LATEST = "latest"
STATE_FILE = "dschat_state.json"
BYTES_PER_PARAM_ESTIMATE = 16  # fp32 weights + Adam moments + master copy, per parameter
DISK_MARGIN = 1.2


@dataclass
class TrainState:
    """Where training stands: enough to continue at the exact next micro-batch."""

    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches of ``epoch`` already trained
    micro_step: int = 0
    update_step: int = 0
    tokens_seen: int = 0
    bad_steps: int = 0
    fingerprint: dict = field(default_factory=dict)
    shape: dict | None = None  # world size, micro-batch, accumulation, ZeRO stage (dschat.utils.reshape)


def checkpoints_root(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINTS_DIR)


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    return [
        "the tokenised training data differs (a data file, the tokenizer or the template was changed)"
        if key == "data_digest"
        else f"{key}: checkpoint={saved.get(key)!r} now={current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]


def _rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    from deepspeed.accelerator import get_accelerator

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch": torch.get_rng_state()}
    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        tensors["accelerator"] = accelerator.get_rng_state().cpu()
    return plain, tensors


def _set_rng_state(plain: dict, tensors: dict[str, torch.Tensor]) -> None:
    from deepspeed.accelerator import get_accelerator

    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "accelerator" in tensors:
        get_accelerator().set_rng_state(tensors["accelerator"])


def restore_rng(checkpoint_dir: str) -> None:
    """Put this rank's random number generators back where they were when the checkpoint was taken."""
    rank = dist.get_rank()
    if not os.path.isfile(os.path.join(checkpoint_dir, f"rng_rank{rank}.json")):
        rank = 0  # resumed on more ranks than saved it (another shape: not bit-exact anyway)
    with open(os.path.join(checkpoint_dir, f"rng_rank{rank}.json")) as handle:
        plain = json.load(handle)
    _set_rng_state(plain, load_file(os.path.join(checkpoint_dir, f"rng_rank{rank}.safetensors")))


def newest_size(root: str) -> int | None:
    """Bytes of the newest checkpoint (what the next one will need), None before the first."""
    previous = newest_checkpoint(root)
    if previous is None:
        return None
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(previous) for f in files)


def check_disk_space(root: str, num_params: int) -> None:
    """Refuse to start a checkpoint that cannot fit (the previous one's size, or an estimate)."""
    needed = newest_size(root) or num_params * BYTES_PER_PARAM_ESTIMATE
    free = shutil.disk_usage(root).free
    if free < needed * DISK_MARGIN:
        raise DschatError(
            f"not enough disk space for a checkpoint in {root}: {free / 1e9:.2f} GB free, about "
            f"{needed * DISK_MARGIN / 1e9:.2f} GB needed; the last checkpoint is kept. Free space or "
            "lower --save_total_limit, then resume with --resume"
        )


def save_checkpoint(engine, output_dir: str, state: TrainState, save_total_limit: int) -> str:
    """Write a checkpoint atomically on every rank; return its directory."""
    root = checkpoints_root(output_dir)
    tag = f"step{state.update_step}"
    if dist.get_rank() == 0:
        os.makedirs(root, exist_ok=True)
        check_disk_space(root, sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters()))
    dist.barrier()
    tmp_tag = atomic.TEMP_PREFIX + tag  # every rank writes its shards under this shared name
    tmp_dir = os.path.join(root, tmp_tag)
    rank = dist.get_rank()
    try:
        with atomic.disk_space_guard(tmp_dir, "a checkpoint", newest_size(root)):
            engine.save_checkpoint(root, tag=tmp_tag, save_latest=False)
            plain, tensors = _rng_state()
            atomic.write_json(os.path.join(tmp_dir, f"rng_rank{rank}.json"), plain)
            atomic.write_with(
                os.path.join(tmp_dir, f"rng_rank{rank}.safetensors"), lambda path: save_file(tensors, path)
            )
            if rank == 0:
                atomic.write_json(os.path.join(tmp_dir, STATE_FILE), asdict(state), indent=1)
            dist.barrier()
            if rank == 0:
                manifest.write_manifest(tmp_dir)  # last: it covers every rank's files, now all written
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # the space goes back; "latest" still names the last one
        raise
    final = os.path.join(root, tag)
    if rank == 0:
        atomic.publish_dir(tmp_dir, final)  # the same step saved before (a resumed run) is replaced
        point_latest(root, tag)  # last: until now "latest" names the previous, complete checkpoint
        prune_checkpoints(root, save_total_limit)
    dist.barrier()
    logger.info("checkpoint saved: %s (update_step=%d)", final, state.update_step)
    return final


def point_latest(root: str, tag: str) -> None:
    """Make ``latest`` name checkpoint ``tag`` (atomically: a reader sees the old name or the new one)."""
    atomic.write_text(os.path.join(root, LATEST), tag)


def _is_tag(name: str) -> bool:
    return name.startswith("step") and name[4:].isdigit()


def _is_own_step(root: str, name: str) -> bool:
    """``name`` is a ``step<N>`` directory of ``root`` itself (not a path, not a link to elsewhere)."""
    path = os.path.join(root, name)
    inside = os.path.dirname(os.path.realpath(path)) == os.path.realpath(root)
    return _is_tag(name) and inside and os.path.isdir(path)


def list_checkpoints(root: str) -> list[str]:
    """Published checkpoints under ``root`` (their manifest written), oldest first; not yet verified."""
    if not os.path.isdir(root):
        return []
    found = [
        name
        for name in os.listdir(root)
        if _is_own_step(root, name) and os.path.isfile(os.path.join(root, name, manifest.MANIFEST))
    ]
    return [os.path.join(root, name) for name in sorted(found, key=lambda n: int(n[4:]))]


def prune_checkpoints(root: str, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints (0 keeps all); drop leftovers of interrupted saves."""
    atomic.sweep(root)
    complete = list_checkpoints(root)
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def newest_checkpoint(root: str) -> str | None:
    """The newest published checkpoint, unverified (for messages and size estimates, not for loading)."""
    complete = list_checkpoints(root)
    return complete[-1] if complete else None


def _pointed(root: str) -> str | None:
    """The checkpoint ``latest`` names, if it names one of this run's checkpoints (a plain ``step<N>``)."""
    try:
        with open(os.path.join(root, LATEST), "rb") as handle:
            name = handle.read(64).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return os.path.join(root, name) if _is_own_step(root, name) else None


def intact_checkpoint(root: str) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from: the one ``latest`` names if intact, else the newest intact one.

    Returns it (or None) and one line per damaged checkpoint passed over on the way.
    """
    pointed = _pointed(root)
    order = ([pointed] if pointed else []) + [c for c in reversed(list_checkpoints(root)) if c != pointed]
    if not order and os.path.isdir(root):  # unpublished (pre-manifest or foreign) step dirs: say why not
        order = [os.path.join(root, n) for n in sorted(os.listdir(root)) if _is_own_step(root, n)]
    damaged = []
    for candidate in order:
        problem = manifest.verify(candidate)
        if problem is None:
            return candidate, damaged
        damaged.append(f"{os.path.basename(candidate)}: {problem}")
    return None, damaged


def _resume_target(output: OutputConfig) -> str | None:
    """Where to resume from, verified against its manifest; raises one clear line when nothing usable."""
    if output.resume_from:
        path = os.path.abspath(output.resume_from.rstrip("/"))
        if os.path.isdir(checkpoints_root(path)):  # a run's output dir: its checkpoints
            path = checkpoints_root(path)
        if os.path.isdir(path) and not _is_tag(os.path.basename(path)):
            path, damaged = intact_checkpoint(path)  # a checkpoints/ dir: its latest intact checkpoint
            if path is None:
                raise DschatError(
                    f"--resume_from {output.resume_from!r} holds no intact dschat checkpoint"
                    + (f" ({'; '.join(damaged)})" if damaged else "")
                    + f": pass <output_dir>/{CHECKPOINTS_DIR}/step<N> of a run, or use --resume"
                )
            warn_passed_over(damaged, path)
            return path
        problem = manifest.verify(path) if os.path.isdir(path) else "it is not a directory"
        if problem:
            raise DschatError(
                f"--resume_from {output.resume_from!r} is not a dschat checkpoint to trust: {problem}. Pass "
                f"<output_dir>/{CHECKPOINTS_DIR}/step<N> of a run, or --resume for the newest intact one"
            )
        return path
    if not output.resume:
        return None
    root = checkpoints_root(output.output_dir)
    path, damaged = intact_checkpoint(root)
    if path is None:
        raise DschatError(
            f"--resume: no intact checkpoint in {root}"
            + (f" ({'; '.join(damaged)})" if damaged else "")
            + ": start without --resume (and with --save_interval N to write checkpoints), or resume from a "
            "copy with --resume_from"
        )
    warn_passed_over(damaged, path)
    return path


def warn_passed_over(damaged: list[str], chosen: str) -> None:
    if damaged:
        logger.warning("passed over damaged checkpoints (%s); resuming from %s", "; ".join(damaged), chosen)


def resolve_resume_path(output: OutputConfig) -> str | None:
    """The checkpoint to resume from (``--resume_from PATH`` or ``--resume``), verified; None to start fresh.

    Rank 0 reads and hashes, every rank gets its answer (or its error), so all ranks load the same files.
    """
    return dist.decided_by_rank0(_resume_target, output)


def read_state(path: str) -> TrainState:
    with open(os.path.join(path, STATE_FILE)) as handle:
        return TrainState(**json.load(handle))


def prepare_resume(
    path: str | None, fingerprint: dict, shape: dict, group_by_length: bool, ds_config: dict
) -> reshape.ResumePoint | None:
    """Before the engine exists: refuse a run whose settings differ, and plan loading into this shape (a
    universal conversion, with ``ds_config`` set to load it, when the ranks or the ZeRO stage among 1-3 differ)."""
    if path is None:
        return None
    saved = read_state(path)
    differences = fingerprint_differences(saved.fingerprint, fingerprint)
    if differences:
        raise DschatError(
            f"cannot resume from {path}: the run's settings differ ({'; '.join(differences)}). "
            "Resume with the original flags, or start a new --output_dir"
        )
    return reshape.plan(path, saved.shape, shape, group_by_length, ds_config)


def load_checkpoint(engine, point: reshape.ResumePoint, shape: dict) -> TrainState:
    """Restore engine (weights, optimizer, scheduler) and our state, in this run's shape."""
    path = point.path
    state = read_state(path)
    tag = os.path.basename(path)
    loaded, _ = engine.load_checkpoint(point.load_dir if point.universal else os.path.dirname(path), tag=tag)
    point.done()
    if point.universal and (shared := reshape.untie_optimizer_steps(engine)):
        logger.info(
            "gave %d optimizer states their own step counter (DeepSpeed's ZeRO-3 universal load shares one)",
            shared,
        )
    if loaded is None:
        raise DschatError(
            f"DeepSpeed could not load the checkpoint {path}: it is incomplete or from another run"
        )
    if point.saved_shape != shape:  # the same samples, counted in this shape's micro-batches
        state.step_in_epoch = reshape.rescale(state.step_in_epoch, point.saved_shape, shape, "epoch position")
        state.micro_step = reshape.rescale(state.micro_step, point.saved_shape, shape, "micro-step count")
    state.shape = shape
    logger.info(
        "resumed from %s: epoch=%d step_in_epoch=%d update_step=%d",
        path,
        state.epoch,
        state.step_in_epoch,
        state.update_step,
    )
    return state


def start_state(engine, resume: reshape.ResumePoint | None, fingerprint: dict, shape: dict) -> TrainState:
    """The loaded state when resuming, else a fresh one carrying this run's fingerprint and shape."""
    if resume:
        return load_checkpoint(engine, resume, shape)
    return TrainState(fingerprint=fingerprint, shape=shape)
