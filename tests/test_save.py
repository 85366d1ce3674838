"""HF-format save: reloads with plain from_pretrained under ZeRO 0 and 3, complete tokenizer, atomic swap-in."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import deepspeed
import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

from dschat.errors import DschatError
from dschat.run_dir import read_run_info, write_run_info
from dschat.utils import atomic, save
from dschat.utils.save import gather_state_dict, save_hf_format

pytestmark = pytest.mark.usefixtures("dist_env")

REPO_ROOT = Path(save.__file__).resolve().parents[2]


def ds_config(stage: int) -> dict:
    zero = {"stage": stage}
    if stage == 3:
        # Tiny tensors are otherwise kept whole after the first forward (persistence threshold 1e5 elements),
        # which would let a save that forgets to gather pass.
        zero["stage3_param_persistence_threshold"] = 0
    return {
        "train_micro_batch_size_per_gpu": 2,
        "train_batch_size": 2,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
    }


def build_engine(model_dir, stage: int, tokenizer=None, prepare=None):
    """Load like create_hf (partitioned at load time under ZeRO-3) and wrap in a DeepSpeed engine."""
    config = ds_config(stage)
    # HF keeps only a weak reference: ZeRO-3 construction is active while this object lives.
    hf_ds_config = HfDeepSpeedConfig(config) if stage == 3 else None
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if tokenizer is not None:
        model.resize_token_embeddings(8 * math.ceil(len(tokenizer) / 8))
        model.config.end_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = model.config.eos_token_id
    if prepare is not None:
        prepare(model)
    del hf_ds_config
    assert not is_deepspeed_zero3_enabled()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    # Under ZeRO-3 the parameters are partitioned placeholders; a plain state_dict() would save empty tensors.
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for p in model.parameters()) == (stage == 3)
    engine.eval()
    return engine


BATCH = torch.tensor([[2, 10, 55, 31, 7, 90, 120, 3], [2, 44, 44, 12, 250, 1, 60, 8]])


def logits_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=BATCH, attention_mask=torch.ones_like(BATCH)).logits.float()


def train_one_step(engine) -> None:
    """Move the weights away from the checkpoint so a reload of the original would not pass."""
    engine.train()
    loss = engine(input_ids=BATCH, labels=BATCH).loss
    engine.backward(loss)
    engine.step()
    engine.eval()


CASES = [
    # (zero stage, architecture, safetensors?)
    (0, "opt", True),
    (0, "gpt2", False),
    (3, "opt", True),
    (3, "opt", False),
    (3, "llama", True),
]


@pytest.mark.parametrize(("stage", "arch", "safe"), CASES)
def test_saved_model_reloads_with_plain_from_pretrained(tiny_models, tmp_path, stage, arch, safe):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    engine = build_engine(tiny_models[arch], stage)
    train_one_step(engine)
    # Save while ZeRO-3 parameters are partitioned (an eval forward would leave them gathered for a while).
    assert all(p.numel() == 0 for p in engine.module.parameters()) == (stage == 3)

    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "training.log").write_text("epoch 1 ppl 3.0\n")
    stale = output_dir / ("pytorch_model.bin" if safe else "model.safetensors")
    stale.write_bytes(b"stale weights from an earlier run")

    save_hf_format(
        engine, tokenizer, output_dir, zero_stage=stage, safe_serialization=safe, run_info={"x": 1}
    )
    expected_logits = logits_of(engine)
    original_logits = logits_of(AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval())
    assert (expected_logits - original_logits).abs().max() > 1e-3  # the trained weights differ from the start

    weights = output_dir / ("model.safetensors" if safe else "pytorch_model.bin")
    assert weights.is_file() and not stale.exists()
    assert (output_dir / "training.log").read_text() == "epoch 1 ppl 3.0\n"
    assert not list(output_dir.glob(".saving-*"))
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "dschat_run.json"} <= {
        p.name for p in output_dir.iterdir()
    }
    saved = load_file(weights) if safe else torch.load(weights, weights_only=True)
    # Same keys as a plain save_pretrained of the base model: tied lm_head deduplicated, no placeholders.
    assert set(saved) == set(load_file(tiny_models[arch] / "model.safetensors"))
    assert all(t.numel() > 0 for t in saved.values())

    reloaded = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    torch.testing.assert_close(logits_of(reloaded), expected_logits, rtol=0, atol=1e-5)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(output_dir)
    text = "Human: hello there. Assistant: hi"
    assert reloaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert read_run_info(output_dir) == {"x": 1}


def test_saved_config_and_tokenizer_are_complete(tiny_models, tmp_path):
    """Llama-style: the added [PAD], resized vocab and end_token_id survive (upstream lost the tokenizer config)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    tokenizer.padding_side = "right"
    engine = build_engine(tiny_models["llama"], 0, tokenizer=tokenizer)
    save_hf_format(engine, tokenizer, tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == 8 * math.ceil((len(tokenizer)) / 8) == 304
    assert config["end_token_id"] == tokenizer.eos_token_id
    assert config["pad_token_id"] == engine.module.config.eos_token_id
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == len(tokenizer) == 301
    assert reloaded.pad_token == "[PAD]" and reloaded.pad_token_id == tokenizer.pad_token_id
    assert reloaded.padding_side == "right"
    assert reloaded.chat_template == tokenizer.chat_template
    assert read_run_info(tmp_path) == {}  # no run_info given: no file
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir() if p.is_file()} == {
        p.name: 0o666 & ~umask for p in tmp_path.iterdir() if p.is_file()
    }  # weights too: transformers writes them 0600 through a private temp file


def add_extras(model) -> None:
    """A persistent and a non-persistent buffer, and a LoRA-named parameter that must not be saved."""
    model.register_buffer("kept_buffer", torch.arange(4.0))
    model.register_buffer("scratch_buffer", torch.ones(3), persistent=False)
    model.lora_right_weight = torch.nn.Parameter(torch.ones(2, 2))


@pytest.mark.parametrize("stage", [0, 3])
def test_gather_state_dict_keys_values_and_ties(tiny_models, stage):
    engine = build_engine(tiny_models["opt"], stage, prepare=add_extras)
    state = gather_state_dict(engine, stage)

    original = load_file(tiny_models["opt"] / "model.safetensors")
    for name, tensor in original.items():
        assert state[name].device.type == "cpu"
        torch.testing.assert_close(state[name], tensor, rtol=0, atol=0)
    assert torch.equal(state["kept_buffer"], torch.arange(4.0))
    assert "scratch_buffer" not in state
    assert not [k for k in state if "lora" in k]
    # Tied weights: both HF key names, one tensor, so save_pretrained keeps only the one it expects.
    assert state["lm_head.weight"] is state["model.decoder.embed_tokens.weight"]
    assert set(state) == set(engine.module.state_dict()) - {"lora_right_weight"}


def test_interrupted_save_leaves_no_config(tiny_models, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt"])
    engine = build_engine(tiny_models["opt"], 0)
    save_hf_format(engine, tokenizer, tmp_path)  # a complete earlier save: its config.json must go too
    assert (tmp_path / "config.json").is_file()

    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(dst) == "config.json":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(save.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_hf_format(engine, tokenizer, tmp_path)
    assert not (tmp_path / "config.json").exists()
    assert not list(tmp_path.glob(f"{atomic.TEMP_PREFIX}*"))


def dead_pid() -> int:
    """The pid of a process that has exited (so a temp name carrying it belongs to no live writer)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_leftover_temp_dir_from_a_killed_save_is_removed(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["gpt2"])
    engine = build_engine(tiny_models["gpt2"], 0)
    leftover = tmp_path / f"{atomic.TEMP_PREFIX}save-{dead_pid()}"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    save_hf_format(engine, tokenizer, tmp_path)
    assert not leftover.exists()
    assert (tmp_path / "config.json").is_file()


def test_run_info_round_trip_and_bad_json(tmp_path):
    assert read_run_info(tmp_path) == {}
    info = {"prompt_template": "upstream", "dschat_version": "0.1.0", "args": {"lr": 1e-3, "path": tmp_path}}
    write_run_info(tmp_path, info)
    assert read_run_info(tmp_path) == {**info, "args": {"lr": 1e-3, "path": str(tmp_path)}}
    assert [p.name for p in tmp_path.iterdir()] == ["dschat_run.json"]
    (tmp_path / "dschat_run.json").write_text("{not json")
    with pytest.raises(DschatError, match="dschat_run.json is not valid JSON"):
        read_run_info(tmp_path)


TWO_RANK_SCRIPT = """
import os, sys
import deepspeed, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations import HfDeepSpeedConfig
from dschat.utils.save import save_hf_format

model_dir, output_dir = sys.argv[1], sys.argv[2]
deepspeed.init_distributed(dist_backend="gloo")
config = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 4, "gradient_clipping": 1.0,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
hf_ds_config = HfDeepSpeedConfig(config)
model = AutoModelForCausalLM.from_pretrained(model_dir)
del hf_ds_config
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
batch = torch.tensor([[2, 10, 55, 31, 7, 90, 120, 3], [2, 44, 44, 12, 250, 1, 60, 8]])
engine.backward(engine(input_ids=batch, labels=batch).loss)
engine.step()
save_hf_format(engine, AutoTokenizer.from_pretrained(model_dir), output_dir, zero_stage=3)
engine.eval()
with torch.no_grad():
    logits = engine(input_ids=batch).logits
if torch.distributed.get_rank() == 0:
    torch.save(logits, os.path.join(output_dir, "..", "expected_logits.pt"))
"""


@pytest.mark.slow
def test_two_rank_zero3_save(tiny_models, tmp_path):
    """Two gloo processes: both gather, only rank 0 writes, and the result reloads."""
    script = tmp_path / "two_rank.py"
    script.write_text(TWO_RANK_SCRIPT)
    output_dir = tmp_path / "out"
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "LOCAL_SIZE": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tiny_models["opt"]), str(output_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    reloaded = AutoModelForCausalLM.from_pretrained(output_dir).eval()
    with torch.no_grad():
        logits = reloaded(input_ids=BATCH).logits
    torch.testing.assert_close(logits, torch.load(tmp_path / "expected_logits.pt"), rtol=0, atol=1e-5)
    assert not list(output_dir.glob(".saving-*"))
