"""What bench/gpu_check.py runs: the two profiles (a GPU, or fp32 on a CPU), the models and the runs.

The GPU profile trains real-architecture models, random-initialised from their configs (nothing can be
downloaded there): OPT-350m's shape for the fp16 runs (DeepSpeed-Chat's flagship family) and SmolLM2-360M's
Llama shape for bf16 and the measurements, both with SmolLM2's 49k tokenizer carried in .gpu-packages. The CPU
profile runs the same list in fp32 on tiny models, so `make test` keeps every step of the script working.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_ENV = (("DS_ACCELERATOR", "cpu"), ("CUDA_VISIBLE_DEVICES", ""))  # the same command, on the CPU


@dataclass(frozen=True)
class Profile:
    name: str
    fp16: str  # the dtype of the "fp16" runs (fp32 on a CPU)
    bf16: str
    max_seq_len: int  # of the functional runs
    batch_size: int
    steps: int  # optimizer steps per functional run
    measure_shapes: tuple[tuple[int, int], ...]  # (max_seq_len, micro-batch) of the measurements
    warmup_steps: int  # measurement steps not timed (kernel selection, allocator growth)
    measured_steps: int
    concurrency: int  # functional runs at once (the measurements run alone)
    threads: int  # torch threads per run
    timeout_s: int  # per run


GPU = Profile("gpu", "fp16", "bf16", 512, 4, 8, ((512, 8), (2048, 4)), 2, 6, 4, 4, 180)
CPU = Profile("cpu", "fp32", "fp32", 128, 4, 4, ((64, 4), (128, 2)), 1, 2, 2, 1, 300)


@dataclass(frozen=True)
class Run:
    """One main.py run: a name for the report, a model key, dtype, ZeRO stage and further flags."""

    name: str
    model: str
    dtype: str
    zero: int
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    needs: str | None = None  # a module the run needs; without it the run is skipped and says why
    data: str = "demo"
    shape: tuple[int, int] | None = None  # (max_seq_len, micro-batch) of a measurement
    tags: frozenset[str] = field(default_factory=frozenset)

    @property
    def measured(self) -> bool:
        return self.shape is not None


LORA = ("--lora_dim", "16", "--lora_module_name", "decoder.layers.", "--only_optimize_lora")
MEASURE_MODES = {  # name -> flags; "defaults" is what a user gets without batching flags
    "upstream (pad to max)": ("--pad_to_max_len",),
    "dynamic padding": ("--padding", "longest"),
    "defaults (padding free)": (),
    "packing": ("--packing",),
}


def label(model: str, dtype: str, zero: int, extra: str = "") -> str:
    """A run's name in the report and the checks: unique in both profiles (the CPU one has fp32 everywhere)."""
    return f"{model} {dtype} ZeRO {zero}{extra}"


ON_DEVICE, ON_CPU = ", on the accelerator", ", on the CPU"
CKPT, PADDED, PACKED = " + gradient checkpointing", ", padded rows (sdpa)", ", packed rows (sdpa)"
FLASH, LIGER, OFFLOAD = ", packed rows (flash-attention varlen)", " + Liger kernels", " + offload"


def functional_runs(p: Profile) -> list[Run]:
    h, b = p.fp16, p.bf16

    def run(model, dtype, zero, extra="", flags=(), **kw):
        return Run(label(model, dtype, zero, extra), model, dtype, zero, tuple(flags), **kw)

    return [
        run("tiny", "fp32", 0, ON_DEVICE),
        run("tiny", "fp32", 0, ON_CPU, env=CPU_ENV),
        run("opt", h, 0),
        run("opt", h, 2),
        run("opt", h, 3),
        run("opt", h, 3, OFFLOAD, ["--offload"]),
        run("opt", h, 3, " + LoRA", [*LORA, "--save_lora_adapter"]),
        run("llama", b, 2),
        run("llama", b, 3),
        run("llama", b, 2, CKPT, ["--gradient_checkpointing"]),
        run("llama", "fp32", 2, PADDED, ["--padding", "longest"]),
        run("llama", "fp32", 2, PACKED, ["--padding", "free"]),
        run(
            "llama",
            b,
            2,
            FLASH,
            ["--padding", "free", "--attn_implementation", "flash_attention_2"],
            needs="flash_attn",
        ),
        run("llama", b, 2, LIGER, ["--use_liger_kernel"], needs="liger_kernel"),
    ]


def measurement_runs(p: Profile) -> list[Run]:
    return [
        Run(f"{mode} @ {seq_len}", "llama", p.bf16, 2, flags, data="long-tail", shape=(seq_len, batch))
        for seq_len, batch in p.measure_shapes
        for mode, flags in MEASURE_MODES.items()
    ]


def main_argv(p: Profile, run: Run, model: Path, data: Path, cache: Path, out: Path) -> list[str]:
    """main.py's flags for ``run``: a few optimizer steps, dropout off (the runs compare losses), no eval."""
    seq_len, batch = run.shape or (p.max_seq_len, p.batch_size)
    steps = p.warmup_steps + p.measured_steps if run.measured else p.steps
    return [
        *("--model_name_or_path", str(model), "--data_path", str(data), "--data_split", "10,0,0"),
        *("--data_output_path", str(cache), "--output_dir", str(out), "--seed", "1234"),
        *("--dtype", run.dtype, "--zero_stage", str(run.zero), "--max_seq_len", str(seq_len)),
        *("--per_device_train_batch_size", str(batch), "--per_device_eval_batch_size", str(batch)),
        *("--learning_rate", "1e-3", "--dropout", "0.0", "--max_steps", str(steps)),
        *("--log_interval", "1", "--save_format", "safetensors", "--deepspeed", *run.flags),
    ]


def run_env(p: Profile, extra: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """Each run is its own one-process group: a launcher's (or an earlier in-process run's) RANK, MASTER_PORT and
    the like are dropped, so runs side by side never share a port."""
    from dschat.utils.dist import LAUNCHER_VARS

    env = {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS=str(p.threads), TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **dict(extra)}


def build_models(p: Profile, workdir: Path, tokenizer_dir: Path | None) -> dict[str, Path]:
    """The models the runs name, saved under ``workdir``: tiny ones from tests/tiny.py, or the real shapes."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny import make_model

    models = {"tiny": make_model(workdir / "tiny", "llama", vocab_size=304)}
    if p.name == "cpu":
        models["opt"] = make_model(workdir / "opt-tiny", "opt", vocab_size=304)
        models["llama"] = models["tiny"]
        return models
    if tokenizer_dir is None or not (tokenizer_dir / "tokenizer.json").is_file():
        raise SystemExit(
            f"gpu_check: no tokenizer in {tokenizer_dir}: run 'make gpu-packages' and carry .gpu-packages"
        )
    models["opt"] = save_random_model(workdir / "opt-350m", opt_350m_config, tokenizer_dir)
    models["llama"] = save_random_model(workdir / "llama-360m", smollm2_360m_config, tokenizer_dir)
    return models


def save_random_model(directory: Path, make_config, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = make_config(tokenizer)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def vocab_size(tokenizer) -> int:
    return 8 * -(-len(tokenizer) // 8)


def opt_350m_config(tokenizer):
    """facebook/opt-350m's shape (post-LayerNorm, a 512-wide embedding projected to 1024), SmolLM2's vocabulary."""
    from transformers import OPTConfig

    return OPTConfig(
        vocab_size=vocab_size(tokenizer),
        hidden_size=1024,
        num_hidden_layers=24,
        ffn_dim=4096,
        num_attention_heads=16,
        word_embed_proj_dim=512,
        max_position_embeddings=2048,
        do_layer_norm_before=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def smollm2_360m_config(tokenizer):
    """SmolLM2-360M's Llama shape: 32 layers of 960, grouped-query attention (15 heads, 5 KV), tied head."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size(tokenizer),
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
