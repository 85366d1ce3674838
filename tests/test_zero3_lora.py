"""ZeRO-3 + LoRA + gradient checkpointing end to end: trains, saves a real PEFT adapter, resumes, runs on 2 ranks.

Every run overrides ``stage3_param_persistence_threshold`` to 0: with upstream's 1e4 the tiny LoRA matrices
would stay whole on every rank ("persistent"), so a save that forgot the ZeRO-3 gather would still pass. In
a real model they are larger than the threshold and partitioned, as they are here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import scripts
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_layers import GradientCheckpointingLayer

from dschat.errors import run_cli
from dschat.utils import atomic, train
from dschat.utils.module.lora import LinearLayer_LoRA
from dschat.utils.module.peft_export import ADAPTER_WEIGHTS_NAME, PEFT_KEY_PREFIX

peft = pytest.importorskip("peft")

step1_main = scripts.step1_main()

SCOPES = {"opt8": "decoder.layers.", "llama": "layers."}
RANK, ALPHA = 4, 8.0  # scaling 2: a wrong alpha / r convention would show in the logits
LETTERS = "abcdefghijklmnopqrstuvwxyz"
IDS = torch.tensor([[2, 10, 55, 31, 7, 90, 120, 3], [2, 44, 44, 12, 250, 1, 60, 8]])


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, tiny_models):
    """A variable-length QA file and an equal-length one (same token count per sample: rank means agree)."""
    root = tmp_path_factory.mktemp("z3data")
    varied = [
        {"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}." + " yes" * (i % 5)}
        for i in range(48)
    ]
    (root / "varied.jsonl").write_text("".join(json.dumps(r) + "\n" for r in varied))
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt8"])
    rows, target = [], None
    for a in LETTERS:
        for b in LETTERS:
            n = len(tokenizer(f" Human: Say {a} Assistant: {b} {a}</s>")["input_ids"])
            target = target or n
            if n == target:
                rows.append({"prompt": f"Say {a}", "response": f"{b} {a}"})
    (root / "equal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:32]))
    override = root / "no_persistence.json"
    override.write_text(json.dumps({"zero_optimization": {"stage3_param_persistence_threshold": 0}}))
    return root


def flags(model_dir, data, out: Path, scope: str, *extra: str, batch_size: int = 4) -> list[str]:
    """main.py's flags for a ZeRO-3 LoRA run with gradient checkpointing and the adapter export."""
    return [
        *("--model_name_or_path", str(model_dir), "--data_path", str(data), "--data_split", "10,0,0"),
        *("--data_output_path", str(out.parent / "cache"), "--dtype", "fp32", "--max_seq_len", "48"),
        *("--per_device_train_batch_size", str(batch_size), "--per_device_eval_batch_size", str(batch_size)),
        *("--learning_rate", "1e-3", "--lora_learning_rate", "1e-2", "--zero_stage", "3"),
        *("--lora_dim", str(RANK), "--lora_alpha", str(ALPHA), "--lora_module_name", scope),
        *("--gradient_checkpointing", "--save_lora_adapter"),
        *("--ds_config_override", str(data.parent / "no_persistence.json")),
        *("--output_dir", str(out), "--deepspeed", *extra),
    ]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def engines(monkeypatch):
    """Every engine main.py builds, with its first LoRA layer and a count of that layer's training forwards."""
    made: list[tuple[object, LinearLayer_LoRA, list[bool]]] = []
    create = train.create_engine

    def recording_create_engine(*args, **kwargs):
        engine = create(*args, **kwargs)
        calls: list[bool] = []
        # A layer inside the first decoder layer: transformers 5 checkpoints the decoder layer's forward (its own
        # hooks stay outside), so the recompute calls this one, hooks and ZeRO-3 fetches included, again.
        lora = next(m for m in engine.module.modules() if isinstance(m, LinearLayer_LoRA))
        lora.register_forward_hook(lambda module, inputs, output: calls.append(module.training))
        made.append((engine, lora, calls))
        return engine

    monkeypatch.setattr(train, "create_engine", recording_create_engine)
    return made


def load(model_dir) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir).eval()


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def lora_linears(model: nn.Module, scope: str) -> dict[str, nn.Linear]:
    """The linear layers --lora_module_name converts, by qualified name (upstream's substring match)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and scope in n}


def check_adapter(out: Path, base: nn.Module, scope: str) -> dict[str, torch.Tensor]:
    """Every converted layer has a trained, full-shape A and B in the adapter; returns the tensors."""
    adapter = out / "lora_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    linears = lora_linears(base, scope)
    assert config["target_modules"] == list(linears) and config["r"] == RANK and config["lora_alpha"] == ALPHA
    tensors = load_file(adapter / ADAPTER_WEIGHTS_NAME)
    assert len(tensors) == 2 * len(linears)
    for name, linear in linears.items():
        a, b = (
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"],
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"],
        )
        # Not ZeRO-3's 0-element placeholders: the gathered [r, in] and [out, r].
        assert a.shape == (RANK, linear.in_features) and b.shape == (linear.out_features, RANK)
        assert b.abs().max() > 0, f"{name}: B starts at zero, so training never reached it"
    return tensors


@pytest.mark.parametrize(("arch", "only_lora"), [("opt8", True), ("llama", False)])
def test_zero3_lora_with_checkpointing_trains_and_saves_an_adapter_equal_to_the_fused_model(
    tmp_path, tiny_models, data_files, dist_env, engines, arch, only_lora
):
    scope, out = SCOPES[arch], tmp_path / "out"
    extra = ("--num_train_epochs", "2", *(["--only_optimize_lora"] if only_lora else []))
    argv = flags(tiny_models[arch], data_files / "varied.jsonl", out, scope, *extra)
    assert run_cli(step1_main.main, argv) == 0

    # Checkpointing is on, non-reentrant (transformers 5's default), and really recomputes every layer.
    (engine, lora, calls), *_ = engines
    # Partitioned, as in a real model: an export that skipped the gather would write these 0-element tensors.
    assert lora.lora_right_weight.numel() == lora.lora_left_weight.numel() == 0
    assert engine.module.is_gradient_checkpointing
    layer = next(m for m in engine.module.modules() if isinstance(m, GradientCheckpointingLayer))
    assert layer.gradient_checkpointing and layer._gradient_checkpointing_func.keywords == {
        "use_reentrant": False
    }
    trained = losses(out)
    assert sum(calls) == 2 * len(trained)  # forward + recompute per micro-step
    assert sum(trained[-3:]) / 3 < sum(trained[:3]) / 3 - 0.1

    # The fused model is the base plus the adapter's update, layer by layer; with --only_optimize_lora nothing
    # else moved.
    base, fused = load(tiny_models[arch]), load(out)
    tensors = check_adapter(out, base, scope)
    base_state, fused_state = base.state_dict(), fused.state_dict()
    for name in lora_linears(base, scope):
        a, b = (
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"],
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"],
        )
        delta = fused_state[f"{name}.weight"] - base_state[f"{name}.weight"]
        torch.testing.assert_close(delta, (ALPHA / RANK) * b @ a, rtol=0, atol=1e-6)
    untouched = {k for k in base_state if not any(k == f"{n}.weight" for n in lora_linears(base, scope))}
    moved = {k for k in untouched if k in fused_state and not torch.equal(base_state[k], fused_state[k])}
    if only_lora:
        assert moved == set()
    else:
        assert moved  # embeddings, norms, ... trained too

    # PEFT on the base (with the run's other weights: a resized vocabulary, or trained non-LoRA parameters)
    # computes what the fused model computes.
    base.resize_token_embeddings(fused.config.vocab_size)
    base.load_state_dict({k: v for k, v in fused_state.items() if k in untouched}, strict=False)
    adapted = peft.PeftModel.from_pretrained(base, out / "lora_adapter").eval()
    expected = logits(fused)
    diff = (logits(adapted) - expected).abs().max().item()
    assert diff < 1e-5, f"PEFT vs fused max abs logit diff {diff}"
    with adapted.disable_adapter():
        assert (logits(adapted) - expected).abs().max() > 1e-3  # the adapter carries the fine-tuning


def test_zero3_lora_with_checkpointing_resumes_exactly(tmp_path, tiny_models, data_files, dist_env):
    """Stop at a checkpoint (--max_steps), resume, finish: bit-exact per-step losses, model and adapter."""
    common = ("--only_optimize_lora", "--save_interval", "3")  # OPT's dropout stays on: RNG is restored too

    def run(out: Path, *extra: str) -> None:
        argv = flags(
            tiny_models["opt8"], data_files / "varied.jsonl", out, "decoder.layers.", *common, *extra
        )
        assert run_cli(step1_main.main, argv) == 0

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run(whole, "--max_steps", "6")
    run(stopped, "--max_steps", "3")
    assert len(losses(stopped)) == 3
    run(stopped, "--max_steps", "6", "--resume")

    assert losses(stopped) == losses(whole) and len(losses(whole)) == 6
    for name in ("model.safetensors", f"lora_adapter/{ADAPTER_WEIGHTS_NAME}"):
        a, b = load_file(whole / name), load_file(stopped / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow
def test_two_ranks_through_the_launcher_match_one_rank_resume_and_write_one_adapter(
    tmp_path, tiny_models, data_files, dist_env
):
    """2 ranks x micro-batch 2 (stopped at a checkpoint, then resumed) == 1 rank x 4, uninterrupted."""
    data, scope = data_files / "equal.jsonl", SCOPES["llama"]
    common = ("--only_optimize_lora", "--dropout", "0.0", "--save_interval", "2")
    one, two = tmp_path / "one", tmp_path / "two"
    argv = flags(tiny_models["llama"], data, one, scope, *common, "--max_steps", "4")
    assert run_cli(step1_main.main, argv) == 0

    env = scripts.process_env()
    launcher = [scripts.DEEPSPEED, "--num_gpus", "2", "--master_port", "29683"]
    for extra in (("--max_steps", "2"), ("--max_steps", "4", "--resume")):
        argv = flags(tiny_models["llama"], data, two, scope, *common, *extra, batch_size=2)
        result = subprocess.run(
            [*launcher, str(scripts.MAIN), *argv], env=env, capture_output=True, text=True, timeout=300
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-3000:]
        assert log.count("saved PEFT LoRA adapter") == 1
        assert ("resumed from" in log and "update_step=2" in log) == ("--resume" in extra)

    assert losses(two) == pytest.approx(losses(one), abs=1e-5) and len(losses(one)) == 4
    assert sorted(p.name for p in (two / "lora_adapter").iterdir()) == sorted(
        p.name for p in (one / "lora_adapter").iterdir()
    )
    assert not list(two.glob(f"{atomic.TEMP_PREFIX}*"))  # no temp dirs left by a second writer
    base = load(tiny_models["llama"])
    a, b = check_adapter(one, base, scope), check_adapter(two, base, scope)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
