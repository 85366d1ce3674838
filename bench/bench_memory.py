#!/usr/bin/env python
"""Where one training step's memory goes, and what the chunked loss, lean activations and checkpointing save.

Part 1 (in this process): one forward + backward of the model on a packed micro-batch (rows of several
samples, block-diagonal mask), recording every tensor autograd keeps for the backward pass (a
``saved_tensors_hooks`` pack hook) with the module that saved it, grouped: vocabulary-wide logits and their
softmax, attention scores, per-layer activations by kind, the chunked loss's gradients. Weights, gradients and
Adam's two moments are counted from the parameters.
Part 2 (one fresh process each, main.py through DeepSpeed): peak RSS (VmHWM), step time and tokens/s of packed
runs with ``--lm_loss full`` (transformers' loss: before), the chunked loss with autograd's MLPs and norms, the
defaults (chunked loss, lean activations), ``--gradient_checkpointing``,
glibc's ``MALLOC_MMAP_THRESHOLD_`` (freed activation blocks go back to the OS instead of fragmenting the heap),
and twice the tokens per micro-batch. Prints the tables and writes its section of bench/RESULTS.md.

    python bench/bench_memory.py                      # SmolLM2-135M, packed 4 x 512, fp32, 2 threads
    python bench/bench_memory.py --model DIR --threads 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from bench_batching import ROOT, datasets, run_mode
from results_file import replace_section

GB = 1024**3
MMAP_1MB = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}  # glibc: every block >= 1 MB its own mapping
RUNS = {  # name: (main.py flags, environment)
    "transformers' loss (before)": (["--packing", "--lm_loss", "full", "--activation_memory", "full"], {}),
    "chunked loss, autograd's MLP and norms": (["--packing", "--activation_memory", "full"], {}),
    "default: chunked loss + lean activations": (["--packing"], {}),
    "default + --gradient_checkpointing": (["--packing", "--gradient_checkpointing"], {}),
    "default + MALLOC_MMAP_THRESHOLD_=1MB": (["--packing"], MMAP_1MB),
    "default + both": (["--packing", "--gradient_checkpointing"], MMAP_1MB),
    "transformers' loss, 2x tokens (micro-batch 8)": (
        [
            "--packing",
            "--lm_loss",
            "full",
            "--activation_memory",
            "full",
            "--per_device_train_batch_size",
            "8",
        ],
        {},
    ),
    "default + --gradient_checkpointing, 2x tokens": (
        ["--packing", "--gradient_checkpointing", "--per_device_train_batch_size", "8"],
        {},
    ),
}


@contextlib.contextmanager
def patched_environ(values: dict[str, str]):
    """``values`` in os.environ while the block runs (run_mode's worker inherits them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="Model dir (default: the embedded SmolLM2-135M-Instruct)."
    )
    parser.add_argument("--batch_size", type=int, default=4, help="Packed rows per micro-batch.")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3, help="Measured steps per run (one more warms up).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip_runs", action="store_true", help="Only the in-process breakdown.")
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args(argv)
    args.dtype = "fp32"
    return args


def packed_batch(model, rows: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows filled with samples of chat-like lengths (40-200 tokens), built by dschat's packing collator."""
    from dschat.utils.data.batching import PackedCollator
    from dschat.utils.data.collate import REAL_TOKENS

    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    packed = []
    for _ in range(rows):
        lengths, used = [], 0
        while used < width:
            length = min(int(torch.randint(40, 200, (1,), generator=generator)), width - used)
            lengths.append(length)
            used += length
        ids = torch.randint(3, vocab, (width,), generator=generator)
        packed.append(
            {
                "input_ids": ids,
                "answer_mask": torch.ones(width, dtype=torch.bool),
                "seq_lens": torch.tensor(lengths),
            }
        )
    batch = PackedCollator(pad_token_id=0)(packed)
    batch.pop(REAL_TOKENS)
    return batch


class SavedTensorLedger:
    """Bytes autograd keeps for backward, by the module that saved them (each storage counted once)."""

    def __init__(self, model: torch.nn.Module):
        self.stack: list[str] = []
        self.seen: set[int] = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.by_kind: dict[str, int] = defaultdict(int)
        self.vocab = model.config.vocab_size
        self.head_shape = tuple(model.get_output_embeddings().weight.shape)
        for name, module in model.named_modules():
            module.register_forward_pre_hook(lambda m, a, name=name: self.enter(name))
            module.register_forward_hook(lambda m, a, o: self.leave())

    def enter(self, name: str) -> None:
        self.stack.append(name)

    def leave(self) -> None:  # a forward hook that returned a value would replace the module's output
        self.stack.pop()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.by_kind[self.kind(tensor)] += storage.nbytes()
        return tensor

    def kind(self, tensor: torch.Tensor) -> str:
        where = self.stack[-1] if self.stack else ""
        if tensor.dim() >= 2 and tensor.shape[-1] == self.vocab:
            return "vocabulary-wide: logits / log-softmax"
        if tuple(tensor.shape) == self.head_shape:
            return "chunked loss: the head's weight gradient, ready for backward"
        if tensor.dim() == 4 and tensor.shape[-1] == tensor.shape[-2]:
            return "attention scores / probabilities (B x heads x T x T)"
        for part, label in (("attn", "attention layers: q/k/v/o inputs, rotary"), ("mlp", "MLP layers")):
            if part in where:
                return label
        if "norm" in where or "ln" in where:
            return "norms"
        if "layers." in where or ".h." in where:
            return "decoder layers: other"
        return "embeddings, final norm, loss inputs"


def breakdown(model_dir: str, rows: int, width: int, lm_loss: str, mlp: str, checkpointing: bool) -> dict:
    from transformers import AutoModelForCausalLM

    from dschat.utils.model.chunked_loss import use_chunked_loss
    from dschat.utils.model.lean_activations import use_lean_activations

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    if mlp == "lean":
        use_lean_activations(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lm_loss == "chunked":
        use_chunked_loss(model)
    batch = packed_batch(model, rows, width)
    ledger = SavedTensorLedger(model)
    with torch.autograd.graph.saved_tensors_hooks(ledger.pack, lambda tensor: tensor):
        loss = model(**batch, use_cache=False).loss
    saved = dict(ledger.by_kind)
    loss.backward()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "lm_loss": lm_loss,
        "mlp": mlp,
        "checkpointing": checkpointing,
        "attn": model.config._attn_implementation,
        "saved": saved,
        "params_bytes": params,
        "loss": loss.item(),
    }


def interleaved_step_times(model_dir: str, rows: int, width: int, repeats: int = 5) -> dict[str, list[float]]:
    """Forward + backward seconds of the packed batch with autograd's activations and with the lean ones, in
    turn (A B B A ...) in one process on two copies of the model: the machine's drift hits both alike."""
    import copy

    from transformers import AutoModelForCausalLM

    from dschat.utils.model.chunked_loss import use_chunked_loss
    from dschat.utils.model.lean_activations import use_lean_activations

    full = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    lean = copy.deepcopy(full)
    use_chunked_loss(full)
    use_chunked_loss(lean)
    use_lean_activations(lean)
    batch = packed_batch(full, rows, width)
    times: dict[str, list[float]] = {"full": [], "lean": []}
    for repeat in range(repeats + 1):  # the first round warms up
        order = [("full", full), ("lean", lean)]
        for name, model in order if repeat % 2 == 0 else order[::-1]:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            model(**batch, use_cache=False).loss.backward()
            if repeat:
                times[name].append(time.perf_counter() - start)
    return times


def format_breakdown(parts: list[dict], rows: int, width: int) -> list[str]:
    kinds = sorted({k for p in parts for k in p["saved"]}, key=lambda k: -parts[0]["saved"].get(k, 0))
    header = " | ".join(
        f"{p['lm_loss']} loss, {p['mlp']} activations{' + checkpointing' if p['checkpointing'] else ''} ({p['attn']})"
        for p in parts
    )
    params = parts[0]["params_bytes"]
    lines = [
        f"Part 1: what one forward keeps for backward, packed {rows} x {width} tokens (GB).",
        "",
        f"| kept for backward | {header} |",
        "|---|" + "---|" * len(parts),
    ]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{p['saved'].get(kind, 0) / GB:.3f}" for p in parts) + " |")
    lines.append(
        "| **all activations** | "
        + " | ".join(f"**{sum(p['saved'].values()) / GB:.3f}**" for p in parts)
        + " |"
    )
    lines.append(
        "| weights + gradients + Adam moments (fp32, 4 copies) | "
        + " | ".join(f"{4 * params / GB:.3f}" for _ in parts)
        + " |"
    )
    lines.append("| loss | " + " | ".join(f"{p['loss']:.6f}" for p in parts) + " |")
    return lines


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.model is None:
        from dschat.default_model import default_model_dir

        args.model = str(default_model_dir())
    parts = [
        breakdown(args.model, args.batch_size, args.max_seq_len, lm_loss, mlp, checkpointing)
        for lm_loss, mlp, checkpointing in (
            ("full", "full", False),
            ("chunked", "full", False),
            ("chunked", "lean", False),
            ("chunked", "lean", True),
        )
    ]
    lines = format_breakdown(parts, args.batch_size, args.max_seq_len)
    times = interleaved_step_times(args.model, args.batch_size, args.max_seq_len)
    median = {name: statistics.median(values) for name, values in times.items()}
    lines += [
        "",
        f"Forward + backward of the same batch, autograd's activations vs lean, interleaved, {len(times['full'])} "
        f"rounds after a warm-up: median {median['full']:.2f} s vs {median['lean']:.2f} s "
        f"({median['lean'] / median['full']:.2f}x; all: {fmt_times(times['full'])} vs {fmt_times(times['lean'])}).",
    ]
    print("\n".join(lines), flush=True)
    results = []
    if not args.skip_runs:
        with tempfile.TemporaryDirectory() as tmp:
            data = datasets(Path(tmp))["demo (shipped)"]
            for name, (flags, env) in RUNS.items():
                with patched_environ(env):
                    result = run_mode(args, args.model, data, flags, Path(tmp) / f"run-{len(results)}")
                result["run"] = name
                results.append(result)
                print(
                    f"{name:45s} peak={result['peak_rss_gb']:.2f} GB step={result['step_s']:.2f}s", flush=True
                )
    report = format_report(args, lines, results)
    print(report)
    replace_section(args.output, report)
    Path(args.output).with_name("RESULTS_memory.json").write_text(
        json.dumps({"breakdown": parts, "step_times": times, "runs": results}, indent=1)
    )


def fmt_times(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def format_report(args, breakdown_lines: list[str], results: list[dict]) -> str:
    lines = [
        "# Memory benchmark: where a packed step's memory goes",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python bench/bench_memory.py` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {args.threads} torch threads, fp32. Model "
        f"`{Path(args.model).name}`, packed micro-batch {args.batch_size} x {args.max_seq_len}.",
        "",
        *breakdown_lines,
        "",
    ]
    if results:
        base = results[0]
        lines += [
            f"Part 2: main.py on the demo data, `--packing`, ZeRO 0, one process each, {args.steps} measured steps.",
            "",
            "| run | peak RSS GB | x before | step s | useful tok/s | final loss |",
            "|---|---|---|---|---|---|",
        ]
        for r in results:
            lines.append(
                f"| {r['run']} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x | "
                f"{r['step_s']:.2f} | {r['useful_tps']:.1f} | {r['final_loss']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
