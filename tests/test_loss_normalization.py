"""--loss_normalization: token gives the same steps however a step's samples are cut; micro_batch (upstream) not.

Data order: upstream's DistributedSampler draws one permutation p of the 44 train samples (seed 0, independent
of the world size) and gives rank r the samples p[r::W]. So micro-batch 8 on one rank trains p[8k:8k+8] in step
k, micro-batch 2 x accumulation 4 trains the same eight in four pieces, and two ranks with micro-batch 4 train
p[8k], p[8k+2], .. on rank 0 and p[8k+1], p[8k+3], .. on rank 1: the same eight again. 44 = 5 * 8 + 4 needs no
padding on 2 ranks and ends the epoch with a shorter step of 4 samples in every configuration.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
from pathlib import Path

import pytest
import scripts
import torch
from transformers import AutoModelForCausalLM

from dschat.errors import run_cli
from dschat.flags import parse_train_args
from dschat.utils import optim, train
from dschat.utils.data.collate import REAL_TOKENS, SFTCollator
from dschat.utils.loss_normalization import backward_scale, count_targets, token_windows
from dschat.utils.model.patches import causal_lm_model_to_fp32_loss

step1_main = scripts.step1_main()

TRAIN_SAMPLES = 44  # 90% of the 49 rows below (upstream's train/eval carving)
COMMON = ("--dropout", "0.0", "--learning_rate", "1e-3")


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """QA rows whose answers differ in length, so micro-batches carry different numbers of loss tokens."""
    path = tmp_path_factory.mktemp("data") / "varied.jsonl"
    rows = [
        {"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}." + " yes" * (i % 7)}
        for i in range(49)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def argv_for(model, data, root: Path, name: str, *flags: str) -> list[str]:
    return scripts.main_argv(model, data, root / "cache", "--output_dir", str(root / name), *COMMON, *flags)


def run(model, data, root: Path, name: str, *flags: str) -> tuple[list[dict], Path]:
    """One in-process run: its metrics rows and output dir."""
    assert run_cli(step1_main.main, argv_for(model, data, root, name, *flags)) == 0
    out = root / name
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()], out


def step_losses(rows: list[dict]) -> list[float]:
    """The loss of each optimizer step: the row that ended it (token: the step's token-weighted mean)."""
    ends = [
        row
        for before, row in zip([{"update_step": 0}, *rows], rows)
        if row["update_step"] != before["update_step"]
    ]
    return [row["loss"] for row in ends]


def max_weight_diff(a: Path, b: Path) -> float:
    first = AutoModelForCausalLM.from_pretrained(a).state_dict()
    second = AutoModelForCausalLM.from_pretrained(b).state_dict()
    return max((first[key] - second[key]).abs().max().item() for key in first)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models, varied, dist_env):
    """Token normalisation, one rank, micro-batch 8, no accumulation: every step is one micro-batch."""
    root = tmp_path_factory.mktemp("reference")
    flags = ("--per_device_train_batch_size", "8", "--loss_normalization", "token")
    return run(tiny_models["opt8"], varied, root, "ref", *flags)


def test_token_steps_do_not_depend_on_micro_batch_and_accumulation(tmp_path, tiny_models, varied, reference):
    ref_rows, ref_dir = reference
    # ZeRO-2 and the fp32 loss patch on this side: both must honour the step's normalisation too.
    rows, out = run(
        tiny_models["opt8"],
        varied,
        tmp_path,
        "acc",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "4",
        "--loss_normalization",
        "token",
        "--zero_stage",
        "2",
        "--compute_fp32_loss",
    )
    assert len(ref_rows) == 6 and len(rows) == TRAIN_SAMPLES // 2  # 5 steps of 8 samples, then one of 4
    assert [row["update_step"] for row in rows][-3:] == [
        5,
        5,
        6,
    ]  # the short last window ends the epoch's step
    assert step_losses(rows) == pytest.approx(step_losses(ref_rows), abs=1e-5)
    assert max_weight_diff(out, ref_dir) < 1e-5
    recorded = json.loads((out / "dschat_run.json").read_text())["args"]
    assert recorded["loss_normalization"] == "token" and recorded["gradient_accumulation_steps"] == 4


def test_micro_batch_steps_depend_on_the_cut(tmp_path, tiny_models, varied, reference):
    ref_rows, _ = reference
    model, short = tiny_models["opt8"], ("--max_steps", "5")
    big_rows, big = run(model, varied, tmp_path, "big", "--per_device_train_batch_size", "8", *short)
    acc_rows, acc = run(
        model,
        varied,
        tmp_path,
        "acc",
        "--per_device_train_batch_size",
        "2",
        "--gradient_accumulation_steps",
        "4",
        *short,
    )
    # One micro-batch per step on one rank: upstream's mean and the token normalisation are the same maths.
    assert step_losses(big_rows) == pytest.approx(step_losses(ref_rows)[:5], abs=1e-5)
    # Upstream's accumulation averages the four micro-batch means: short answers weigh more.
    acc_steps = [sum(row["loss"] for row in acc_rows[i : i + 4]) / 4 for i in range(0, 20, 4)]
    assert max(abs(a - b) for a, b in zip(acc_steps, step_losses(big_rows))) > 5e-4
    assert max_weight_diff(acc, big) > 1e-4


@pytest.mark.slow
def test_two_ranks_through_the_launcher_give_the_one_rank_token_steps(
    tmp_path, tiny_models, varied, reference
):
    ref_rows, ref_dir = reference
    env = scripts.process_env()
    flags = argv_for(
        tiny_models["opt8"],
        varied,
        tmp_path,
        "two",
        "--per_device_train_batch_size",
        "4",
        "--loss_normalization",
        "token",
    )
    launcher = [scripts.DEEPSPEED, "--num_gpus", "2", "--master_port", "29673"]
    result = subprocess.run(
        [*launcher, str(scripts.MAIN), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert step_losses(rows) == pytest.approx(step_losses(ref_rows), abs=1e-5)
    assert max_weight_diff(tmp_path / "two", ref_dir) < 1e-5


def test_packed_lora_token_steps_do_not_depend_on_the_cut(tmp_path, tiny_models, varied, dist_env):
    lora = (
        "--lora_dim",
        "4",
        "--lora_module_name",
        "layers.",
        "--only_optimize_lora",
        "--lora_learning_rate",
        "1e-2",
    )
    common = ("--packing", "--max_seq_len", "128", "--loss_normalization", "token", *lora)
    model = tiny_models["llama"]
    one_rows, one = run(model, varied, tmp_path, "one", *common, "--per_device_train_batch_size", "4")
    four_rows, four = run(
        model,
        varied,
        tmp_path,
        "four",
        *common,
        "--per_device_train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "4",
        "--zero_stage",
        "3",
    )
    assert len(one_rows) == math.ceil(len(four_rows) / 4)  # the same packed rows, four to a step
    assert len({row["loss_tokens"] for row in four_rows}) > 1  # packed rows carry different token counts
    assert step_losses(four_rows) == pytest.approx(step_losses(one_rows), abs=1e-5)
    assert max_weight_diff(four, one) < 1e-5


def make_batch(lengths: list[int], seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    items = [{"input_ids": torch.randint(3, 300, (n,), generator=generator)} for n in lengths]
    batch = SFTCollator(pad_token_id=1, max_seq_len=16, pad_to_max_len=False)(items)
    batch.pop(REAL_TOKENS)
    return batch


def test_a_token_window_gives_the_gradient_of_the_steps_token_mean(tiny_models, dist_env):
    """DeepSpeed's own scaling undone exactly: Adam hides a constant gradient factor, this check does not."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["opt8"], dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    reference = copy.deepcopy(model)
    batches = [make_batch([3, 4], seed=1), make_batch([12, 11], seed=2), make_batch([7], seed=3)]
    config = {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 8, "zero_optimization": {"stage": 0}}
    optimizer = optim.create_optimizer(
        optim.get_optimizer_grouped_parameters(model, 0.0), 1e-3, offload=False
    )
    engine = train.create_engine(model, optimizer, None, config, gradient_checkpointing=False)
    # Three micro-batches against GAS 4: an epoch's shorter last window, which must still end in a step.
    for batch, window in token_windows(batches, 4, backward_scale(engine), torch.device("cpu")):
        engine.backward(train.forward(engine, batch, window) * window.backward_scale)
        if not window.last:
            engine.step()
    grads = {name: p.grad.clone() for name, p in engine.module.named_parameters() if p.grad is not None}
    counts = [count_targets(b["labels"]) for b in batches]
    token_mean = sum(reference(**b).loss * n for b, n in zip(batches, counts)) / sum(counts)
    token_mean.backward()
    for name, p in reference.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6, rtol=1e-5), name
    engine.step()
    assert engine.global_steps == 1


def test_fp32_loss_patch_divides_the_token_loss_sum_by_num_items(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["opt8"], dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 5:] = -100
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels, num_items_in_batch=23).loss  # transformers' own loss
        causal_lm_model_to_fp32_loss(model)
        patched = model(input_ids=ids, labels=labels, num_items_in_batch=23).loss
        mean = model(input_ids=ids, labels=labels).loss
        nothing = model(input_ids=ids, labels=torch.full_like(labels, -100), num_items_in_batch=1).loss
    assert patched.item() == pytest.approx(expected.item(), rel=1e-6)
    assert patched.item() == pytest.approx(mean.item() * 12 / 23, rel=1e-6)  # 4 + 8 targets after the shift
    assert nothing.item() == 0.0


def test_an_unknown_normalization_lists_the_choices(tiny_models, capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--model_name_or_path", str(tiny_models["opt"]), "--loss_normalization", "sum"])
    assert "choose from 'micro_batch', 'token'" in capsys.readouterr().err
    args = parse_train_args(["--model_name_or_path", str(tiny_models["opt"])])
    assert args.loss_normalization == "micro_batch"  # upstream's maths unless asked
