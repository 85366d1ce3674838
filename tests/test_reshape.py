"""Resume on another cluster shape: a checkpoint of 2 ranks resumed by 1 (and 1 by 2), ZeRO 0 as it is, ZeRO 1-2
and ZeRO-3 (and from one to the other) through DeepSpeed's universal checkpoint, with the per-step losses of an uninterrupted run of the same global
batch; what DeepSpeed cannot convert is one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import scripts
import torch
from conftest import free_port
from transformers import AutoTokenizer

from dschat.errors import DschatError, run_cli
from dschat.utils import reshape

step1 = scripts.step1_main()
GLOBAL_BATCH = 8


@pytest.fixture(scope="module")
def equal_data(tmp_path_factory, tiny_models):
    """Samples of one token length: upstream's per-micro-batch mean then weighs every sample alike, so any cut
    of the global batch gives the same loss (on variable lengths use --loss_normalization token)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt8"])
    rows, target = [], None
    for a in "abcdefghijklmnopqrstuvwxyz":
        for b in "abcdefghijklmnopqrstuvwxyz":
            n = len(tokenizer(f" Human: Say {a} Assistant: {b} {a}</s>")["input_ids"])
            target = target or n
            if n == target:
                rows.append({"prompt": f"Say {a}", "response": f"{b} {a}"})
    path = tmp_path_factory.mktemp("reshape") / "equal.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:72]))
    return path


def flags(model, data, out, micro: int, zero: int, *extra) -> list[str]:
    return [
        *("--model_name_or_path", str(model), "--data_path", str(data), "--data_split", "10,0,0"),
        *("--data_output_path", str(out.parent / "cache"), "--dtype", "fp32", "--max_seq_len", "32"),
        *("--per_device_train_batch_size", str(micro), "--zero_stage", str(zero), "--dropout", "0.0"),
        *("--learning_rate", "1e-2", "--output_dir", str(out), "--deepspeed", *extra),
    ]


def launch(world: int, model, data, out, micro: int, zero: int, *extra) -> None:
    """main.py on ``world`` CPU ranks through DeepSpeed's launcher."""
    env = scripts.process_env()
    launcher = [scripts.DEEPSPEED, "--num_gpus", str(world), "--master_port", str(free_port())]
    result = subprocess.run(
        [*launcher, str(scripts.MAIN), *flags(model, data, out, micro, zero, *extra)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=out.parent,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "zero, lora, stages",
    [
        (0, (), [0]),
        (2, (), [2, 1, 3]),  # ZeRO 1 <-> 2 load the same conversion; ZeRO-3 through universal_bridge
        (3, (), [3, 2]),
        (3, ("--lora_dim", "4", "--only_optimize_lora"), [3]),
    ],
)
def test_two_ranks_resumed_by_one_match_an_uninterrupted_run(
    tmp_path, tiny_models, equal_data, dist_env, zero, lora, stages
):
    model = tiny_models["opt8"]
    whole = tmp_path / "whole"
    assert (
        run_cli(step1.main, flags(model, equal_data, whole, GLOBAL_BATCH, zero, "--max_steps", "6", *lora))
        == 0
    )

    moved = tmp_path / "moved"
    first = ("--max_steps", "3", "--save_interval", "3", *lora)
    launch(2, model, equal_data, moved, GLOBAL_BATCH // 2, zero, *first)
    (moved / "config.json").unlink()
    for stage in stages:
        out = tmp_path / f"moved-z{stage}"
        shutil.copytree(moved, out)
        resumed = flags(model, equal_data, out, GLOBAL_BATCH, stage, "--max_steps", "6", "--resume", *lora)
        assert run_cli(step1.main, resumed) == 0
        assert losses(out) == pytest.approx(losses(whole), abs=2e-5), stage
        assert not [
            p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp-")
        ]  # conversion gone


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_one_rank_resumed_by_two(tmp_path, tiny_models, equal_data, dist_env, zero):
    model = tiny_models["opt8"]
    whole = tmp_path / "whole"
    assert run_cli(step1.main, flags(model, equal_data, whole, GLOBAL_BATCH, zero, "--max_steps", "6")) == 0
    grown = tmp_path / "grown"
    first = flags(model, equal_data, grown, GLOBAL_BATCH, zero, "--max_steps", "3", "--save_interval", "3")
    assert run_cli(step1.main, first) == 0
    (grown / "config.json").unlink()
    launch(2, model, equal_data, grown, GLOBAL_BATCH // 2, zero, "--max_steps", "6", "--resume")
    assert losses(grown) == pytest.approx(losses(whole), abs=2e-5)


@pytest.mark.slow
def test_two_ranks_of_zero2_resumed_by_four_of_zero3(tmp_path, tiny_models, equal_data, dist_env):
    model = tiny_models["opt8"]
    whole = tmp_path / "whole"
    assert run_cli(step1.main, flags(model, equal_data, whole, GLOBAL_BATCH, 2, "--max_steps", "6")) == 0
    out = tmp_path / "out"
    launch(2, model, equal_data, out, GLOBAL_BATCH // 2, 2, "--max_steps", "3", "--save_interval", "3")
    (out / "config.json").unlink()
    launch(4, model, equal_data, out, GLOBAL_BATCH // 4, 3, "--max_steps", "6", "--resume")
    assert losses(out) == pytest.approx(losses(whole), abs=2e-5)


def test_every_sample_is_used_once_across_a_shape_change():
    """DistributedSampler deals the epoch's permutation round robin, so after n micro-steps of m on W ranks the
    first n*m*W samples are used; the new shape's ranks, skipping the rescaled count, take exactly the rest."""
    dataset = list(range(96))
    saved = {"world_size": 2, "per_device_train_batch_size": 4}
    now = {"world_size": 4, "per_device_train_batch_size": 2}
    before = [
        index
        for rank in range(2)
        for index in list(torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=rank, seed=0))[
            : 5 * 4
        ]
    ]
    skip = reshape.rescale(5, saved, now, "epoch position")
    after = [
        index
        for rank in range(4)
        for index in list(torch.utils.data.DistributedSampler(dataset, num_replicas=4, rank=rank, seed=0))[
            skip * 2 :
        ]
    ]
    assert sorted(before + after) == dataset


def test_what_deepspeed_cannot_convert_is_one_clear_line():
    shape = {"world_size": 2, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1}
    from_zero0 = ({**shape, "zero_stage": 0}, {**shape, "world_size": 1, "zero_stage": 3})
    with pytest.raises(DschatError, match="ZeRO-0 checkpoint cannot be loaded as ZeRO-3.*--zero_stage 0"):
        reshape.plan("ckpt", *from_zero0, group_by_length=False, ds_config={})
    to_zero0 = ({**shape, "zero_stage": 2}, {**shape, "world_size": 1, "zero_stage": 0})
    with pytest.raises(DschatError, match="ZeRO-2 checkpoint cannot be loaded as ZeRO-0.*--zero_stage 2"):
        reshape.plan("ckpt", *to_zero0, group_by_length=False, ds_config={})
    with pytest.raises(DschatError, match="group_by_length"):
        reshape.plan(
            "ckpt", {**shape, "zero_stage": 0}, {**shape, "world_size": 1, "zero_stage": 0}, True, {}
        )
    halved = (
        {**shape, "zero_stage": 2},
        {**shape, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "zero_stage": 2},
    )
    with pytest.raises(DschatError, match="--gradient_accumulation_steps must stay 1"):
        reshape.plan("ckpt", *halved, group_by_length=False, ds_config={})
    with pytest.raises(DschatError, match="not a whole number of micro-steps"):
        reshape.rescale(
            3, {**shape, "per_device_train_batch_size": 1}, {**shape, "world_size": 4}, "position"
        )
