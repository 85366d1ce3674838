"""Launch scripts: each one's flags equal the spec's table, main.py accepts them, and the plan reflects them.

The scripts are run as they are. A fake ``deepspeed`` (chosen with ``DEEPSPEED``, see common.sh) records each
call (launcher options, script, main.py flags, cwd); the hub model and dataset names are replaced by appending
``--model_name_or_path``/``--data_path`` after the positional arguments (the last occurrence of a flag wins),
which is how the training_scripts README tells users to swap models too.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dschat.flags import parse_train_args as parse_args

STEP1 = Path(__file__).resolve().parents[1] / "training" / "step1_supervised_finetuning"
SCRIPTS = STEP1 / "training_scripts"
spec = importlib.util.spec_from_file_location("step1_main_for_scripts", STEP1 / "main.py")
step1_main = importlib.util.module_from_spec(spec)
spec.loader.exec_module(step1_main)

DATASETS = {
    "default": ["Dahoas/rm-static"],
    "four": [
        "Dahoas/rm-static",
        "Dahoas/full-hh-rlhf",
        "Dahoas/synthetic-instruct-gptj-pairwise",
        "yitingxie/rlhf-reward-datasets",
    ],
    "zh": [
        "wangrui6/Zhihu-KOL",
        "Cohere/miracl-zh-queries-22-12",
        "Hello-SimpleAI/HC3-Chinese",
        "mkqa-Chinese",
    ],
    "ja": ["mkqa-Japanese", "Cohere/miracl-ja-queries-22-12", "lmqg/qg_jaquad", "lmqg/qag_jaquad"],
}
FOUR = DATASETS["four"]
LAUNCHERS = {"all": [], "one": ["--num_gpus", "1"], "hostfile": ["--hostfile", "/job/hostfile"]}

# Spec section 9's table (plus the brief's modern families): what each script must pass to main.py.
# lora: --lora_dim, scope: --lora_module_name, only: --only_optimize_lora, ckpt: --gradient_checkpointing,
# tb: --enable_tensorboard; tiny: which tiny test model stands in for the real one.
TABLE = """
script                          | model                               | launch   | data    | split  | batch | lr      | wd  | epochs | gas | zero | lora | scope           | only | ckpt | tb | dtype | template      | output                        | tiny
opt/single_gpu/run_1.3b.sh      | facebook/opt-1.3b                   | one      | default | 2,4,4  | 16    | 1e-3    | 0   | 1      | 8   | 0    | 128  | decoder.layers. | 0    | 0    | 1  | fp16  | upstream      | output                        | opt
opt/single_gpu/run_6.7b_lora.sh | facebook/opt-6.7b                   | one      | four    | 2,4,4  | 8     | 1e-3    | 0   | 16     | 16  | 0    | 128  | decoder.layers. | 0    | 1    | 0  | fp16  | upstream      | output                        | opt
opt/single_node/run_1.3b.sh     | facebook/opt-1.3b                   | all      | four    | 2,4,4  | 8     | 9.65e-6 | 0   | 16     | 1   | 2    | 0    | decoder.layers. | 0    | 0    | 1  | fp16  | upstream      | output                        | opt
opt/single_node/run_1.3b_lora.sh| facebook/opt-1.3b                   | all      | four    | 2,4,4  | 8     | 1e-3    | 0.1 | 16     | 1   | 0    | 128  | decoder.layers. | 1    | 0    | 0  | fp16  | upstream      | output                        | opt
opt/single_node/run_6.7b.sh     | facebook/opt-6.7b                   | all      | four    | 2,4,4  | 6     | 9.65e-6 | 0   | 16     | 1   | 3    | 0    | decoder.layers. | 0    | 1    | 0  | fp16  | upstream      | output                        | opt
opt/single_node/run_13b.sh      | facebook/opt-13b                    | all      | four    | 2,4,4  | 4     | 1e-4    | 0   | 16     | 1   | 3    | 128  | decoder.layers. | 0    | 1    | 0  | fp16  | upstream      | output                        | opt
opt/single_node/run_30b_lora.sh | facebook/opt-30b                    | all      | four    | 2,4,4  | 4     | 9.65e-6 | 0   | 16     | 1   | 3    | 128  | decoder.layers. | 0    | 1    | 0  | fp16  | upstream      | output                        | opt
opt/multi_node/run_66b.sh       | facebook/opt-66b                    | hostfile | four    | 2,4,4  | 4     | 1e-4    | 0.1 | 2      | 1   | 3    | 128  | decoder.layers. | 0    | 1    | 0  | fp16  | upstream      | output                        | opt
llama2/run_llama2_7b.sh         | meta-llama/Llama-2-7b-hf            | all      | four    | 2,4,4  | 4     | 9.65e-6 | 0   | 4      | 1   | 3    | 0    | decoder.layers. | 0    | 1    | 0  | fp16  | upstream      | output_step1_llama2_7b        | llama
llama2/run_llama2_7b_lora.sh    | meta-llama/Llama-2-7b-hf            | all      | four    | 2,4,4  | 4     | 9.65e-6 | 0   | 4      | 1   | 3    | 128  | layers.         | 0    | 1    | 0  | fp16  | upstream      | output_step1_llama2_7b_lora   | llama
other_language/run_chinese.sh   | bigscience/bloom-1b1                | all      | zh      | 10,0,0 | 8     | 9.65e-6 | 0   | 16     | 1   | 2    | 0    | decoder.layers. | 0    | 0    | 0  | fp16  | upstream      | output                        | gpt2
other_language/run_japanese.sh  | sberbank-ai/mGPT                    | all      | ja      | 10,0,0 | 8     | 9.65e-6 | 0   | 16     | 1   | 2    | 0    | decoder.layers. | 0    | 0    | 0  | fp16  | upstream      | output                        | gpt2
qwen2.5/run_qwen2.5_0.5b.sh     | Qwen/Qwen2.5-0.5B-Instruct          | one      | four    | 2,4,4  | 8     | 1e-5    | 0   | 2      | 4   | 2    | 0    | decoder.layers. | 0    | 0    | 0  | bf16  | chat_template | output_step1_qwen2.5_0.5b     | llama
qwen2.5/run_qwen2.5_7b.sh       | Qwen/Qwen2.5-7B-Instruct            | all      | four    | 2,4,4  | 4     | 1e-5    | 0   | 2      | 4   | 3    | 0    | decoder.layers. | 0    | 1    | 0  | bf16  | chat_template | output_step1_qwen2.5_7b       | llama
qwen2.5/run_qwen2.5_7b_lora.sh  | Qwen/Qwen2.5-7B-Instruct            | all      | four    | 2,4,4  | 8     | 2e-4    | 0   | 2      | 1   | 2    | 64   | layers.         | 1    | 1    | 0  | bf16  | chat_template | output_step1_qwen2.5_7b_lora  | llama
llama3/run_llama3_8b.sh         | meta-llama/Meta-Llama-3-8B-Instruct | all      | four    | 2,4,4  | 4     | 1e-5    | 0   | 2      | 4   | 3    | 0    | decoder.layers. | 0    | 1    | 0  | bf16  | chat_template | output_step1_llama3_8b        | llama
"""
COLUMN_TYPES = dict(batch=int, lr=float, wd=float, epochs=int, gas=int, zero=int, lora=int)
FLAG_COLUMNS = ("only", "ckpt", "tb")


def parse_table(text: str) -> dict[str, dict]:
    header, *rows = [[cell.strip() for cell in line.split("|")] for line in text.strip().splitlines()]
    table = {}
    for cells in rows:
        entry = dict(zip(header, cells))
        for key, kind in COLUMN_TYPES.items():
            entry[key] = kind(entry[key])
        for key in FLAG_COLUMNS:
            entry[key] = entry[key] == "1"
        entry["data"] = DATASETS[entry["data"]]
        entry["launch"] = LAUNCHERS[entry["launch"]]
        table[entry.pop("script")] = entry
    return table


EXPECTED = parse_table(TABLE)


FAKE_DEEPSPEED = """#!{python}
# Stand-in for the deepspeed launcher: record the call, then (FAKE_DEEPSPEED_MODE=exec) drop the launcher
# options and run the user script as one plain process, or (record) just exit with FAKE_DEEPSPEED_RC.
import json, os, sys
args = sys.argv[1:]
at = next(i for i, a in enumerate(args) if a.endswith(".py"))
call = {{"launcher": args[:at], "script": args[at], "args": args[at + 1 :], "cwd": os.getcwd()}}
with open(os.environ["FAKE_DEEPSPEED_LOG"], "a") as log:
    log.write(json.dumps(call) + "\\n")
print("fake deepspeed:", " ".join(args), flush=True)
if os.environ.get("FAKE_DEEPSPEED_MODE") == "exec":
    os.execv(sys.executable, [sys.executable, args[at], *args[at + 1 :]])
sys.exit(int(os.environ.get("FAKE_DEEPSPEED_RC", "0")))
"""


COMMON = SCRIPTS / "common.sh"  # the preamble the scripts source, not a script itself


def all_scripts() -> list[Path]:
    scripts = sorted(SCRIPTS.rglob("*.sh")) + sorted((STEP1 / "evaluation_scripts").rglob("*.sh"))
    return [script for script in scripts if script != COMMON]


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("script-data") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."} for i in range(60)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_env(tmp_path):
    """Environment with the fake launcher as DEEPSPEED (and first on PATH), recording to calls.jsonl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "deepspeed"
    fake.write_text(FAKE_DEEPSPEED.format(python=sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        FAKE_DEEPSPEED_LOG=str(tmp_path / "calls.jsonl"),
        FAKE_DEEPSPEED_MODE="record",
        PYTHON=sys.executable,
        DEEPSPEED=str(fake),
        SWEEP_PAUSE_S="0",
        OMP_NUM_THREADS="1",
    )
    for name in (
        "HOSTFILE",
        "LAUNCHER_ARGS",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    ):
        env.pop(name, None)
    return env


@pytest.fixture
def restore_dschat_logging():
    """main.py's logging setup binds a handler to this test's captured stderr: put the old one back after."""
    log = logging.getLogger("dschat")
    saved = (log.handlers[:], log.level, log.propagate)
    yield
    log.handlers[:], log.level, log.propagate = saved


def run_script(script: Path, args: list[str], env: dict, cwd: Path, timeout: int = 600):
    return subprocess.run(
        ["bash", str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def calls(env: dict) -> list[dict]:
    return [json.loads(line) for line in Path(env["FAKE_DEEPSPEED_LOG"]).read_text().splitlines()]


def overrides(tiny_models, name, data, tmp_path) -> list[str]:
    """What a user appends to run the script on a local model and data set, checking only (--dry_run)."""
    return [
        "--model_name_or_path",
        str(tiny_models[EXPECTED[name]["tiny"]]),
        "--data_path",
        str(data),
        "--dtype",
        "fp32",
        "--data_output_path",
        str(tmp_path / "cache"),
        "--dry_run",
    ]


def test_every_script_is_valid_bash_and_every_table_row_has_its_script():
    scripts = all_scripts()
    assert {str(p.relative_to(SCRIPTS)) for p in scripts if SCRIPTS in p.parents} >= set(EXPECTED)
    for script in [*scripts, COMMON]:
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, (script, result.stderr)
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text, script


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_script_passes_the_spec_flags(name, tmp_path, fake_env):
    expected = EXPECTED[name]
    out = tmp_path / "out"
    # cwd is somewhere else: the script must find main.py itself.
    result = run_script(SCRIPTS / name, [str(out)], fake_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    (call,) = calls(fake_env)
    assert call["launcher"] == expected["launch"] and call["script"] == "main.py"
    assert Path(call["cwd"]) == STEP1
    args = parse_args(call["args"])
    got = dict(
        model=args.model_name_or_path,
        data=args.data_path,
        split=args.data_split,
        batch=args.per_device_train_batch_size,
        lr=args.learning_rate,
        wd=args.weight_decay,
        epochs=args.num_train_epochs,
        gas=args.gradient_accumulation_steps,
        zero=args.zero_stage,
        lora=args.lora_dim,
        scope=args.lora_module_name,
        only=args.only_optimize_lora,
        ckpt=args.gradient_checkpointing,
        tb=args.enable_tensorboard,
        dtype=args.dtype,
        template=args.prompt_template,
    )
    assert got == {key: expected[key] for key in got}
    assert args.per_device_eval_batch_size == args.per_device_train_batch_size
    modern = expected["template"] == "chat_template"
    assert (args.max_seq_len, args.seed, args.num_warmup_steps) == (512, 1234, 50 if modern else 0)
    assert str(args.lr_scheduler_type) in ("cosine", "SchedulerType.COSINE")
    assert args.deepspeed and args.output_dir == str(out)
    if expected["tb"]:
        assert args.tensorboard_path == str(out)
    # Upstream's LoRA scaling is 1/r (alpha 1); the modern LoRA script uses the common alpha = 2r.
    assert args.lora_alpha == (2 * args.lora_dim if modern and args.lora_dim else 1.0)
    assert f'OUTPUT="${{1:-$STEP1_DIR/{expected["output"]}}}"' in (SCRIPTS / name).read_text()
    assert "fake deepspeed: " in (out / "training.log").read_text()


def test_positional_zero_stage_and_extra_flags_reach_main(tmp_path, fake_env):
    out = tmp_path / "rel-out"
    result = run_script(
        SCRIPTS / "opt/single_node/run_1.3b.sh",
        ["rel-out", "3", "--dtype", "bf16", "--print_loss"],
        fake_env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    args = parse_args(calls(fake_env)[0]["args"])
    assert (args.zero_stage, args.dtype, args.print_loss) == (3, "bf16", True)
    assert args.output_dir == str(out)  # a relative $1 is taken from the caller's directory
    assert (out / "training.log").is_file()


def test_launcher_failure_is_the_script_exit_status(tmp_path, fake_env):
    fake_env["FAKE_DEEPSPEED_RC"] = "3"
    result = run_script(
        SCRIPTS / "opt/single_node/run_6.7b.sh", [str(tmp_path / "out")], fake_env, cwd=tmp_path
    )
    assert result.returncode == 3  # pipefail: tee does not hide the launcher's failure
    assert "fake deepspeed" in (tmp_path / "out" / "training.log").read_text()


def test_multi_node_hostfile_default_and_overrides(tmp_path, fake_env):
    script = SCRIPTS / "opt/multi_node/run_66b.sh"
    fake_env.update(
        HOSTFILE=str(tmp_path / "hosts"), LAUNCHER_ARGS="--master_addr 10.0.0.1 --master_port 29601"
    )
    assert run_script(script, [str(tmp_path / "out")], fake_env, cwd=tmp_path).returncode == 0
    assert calls(fake_env)[0]["launcher"] == [
        "--hostfile",
        str(tmp_path / "hosts"),
        "--master_addr",
        "10.0.0.1",
        "--master_port",
        "29601",
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dry_run_plan_reflects_the_script(
    name, tmp_path, fake_env, tiny_models, local_data, dist_env, capsys, restore_dschat_logging
):
    """The script's flags (plus the user overrides) go through main.py's --dry_run: accepted, and planned."""
    expected = EXPECTED[name]
    extra = overrides(tiny_models, name, local_data, tmp_path)
    result = run_script(SCRIPTS / name, [str(tmp_path / "out"), "", *extra], fake_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    capsys.readouterr()

    # What `python main.py <flags>` does, in this process (imports are paid once for all scripts).
    step1_main.main(calls(fake_env)[0]["args"])

    log = capsys.readouterr().err
    assert "dry run: nothing is trained or saved" in log
    global_batch = expected["batch"] * expected["gas"]
    assert f"per_device_batch={expected['batch']} gradient_accumulation_steps={expected['gas']} " in log
    assert f"global_batch={global_batch}" in log and f"zero_stage={expected['zero']} " in log
    assert f"epochs={expected['epochs']} " in log and not (tmp_path / "out" / "config.json").exists()


# One script runs the whole way in the default suite; the rest are slow (each is a fresh Python process).
REAL_DRY_RUN_FAST = "opt/single_gpu/run_1.3b.sh"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=[] if n == REAL_DRY_RUN_FAST else [pytest.mark.slow]) for n in sorted(EXPECTED)],
)
def test_real_dry_run_through_the_script(name, tmp_path, fake_env, tiny_models, local_data):
    """As a user runs it: bash -> (fake) launcher -> python main.py ... --dry_run, log tee'd to the output dir."""
    fake_env["FAKE_DEEPSPEED_MODE"] = "exec"
    extra = overrides(tiny_models, name, local_data, tmp_path)
    result = run_script(SCRIPTS / name, [str(tmp_path / "out"), "", *extra], fake_env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    log = (tmp_path / "out" / "training.log").read_text()
    expected = EXPECTED[name]
    global_batch = expected["batch"] * expected["gas"]
    assert "dry run: nothing is trained or saved" in log and f"global_batch={global_batch}" in log
    assert f"per_device_batch={expected['batch']} gradient_accumulation_steps={expected['gas']} " in log
    assert f"zero_stage={expected['zero']} " in log


SWEEP = SCRIPTS / "opt/single_node/sweep"


def test_sweep_runs_the_eight_configurations(tmp_path, fake_env):
    result = run_script(
        SWEEP / "run_step1_sweep.sh", [str(tmp_path / "sweep"), "--dtype", "bf16"], fake_env, tmp_path
    )
    assert result.returncode == 0, result.stderr

    seen = {}
    for call in calls(fake_env):
        args = parse_args(call["args"])
        name = Path(args.output_dir).name
        seen[name] = (
            args.zero_stage,
            args.offload,
            args.only_optimize_lora,
            args.lora_dim,
            args.learning_rate,
        )
        assert (args.weight_decay, args.dtype, args.per_device_train_batch_size) == (
            0.1 if args.lora_dim else 0.0,
            "bf16",
            8,
        )
        log = Path(args.output_dir) / f"{name}.log"
        command = log.read_text().split(" ", 1)[0]  # upstream echoes the command into the log
        assert command == fake_env["DEEPSPEED"]
    assert seen == {
        f"z{z}_offload_{o}_lora_{lo}": (
            z,
            o == "true",
            lo == "true",
            128 if lo == "true" else 0,
            1e-3 if lo == "true" else 9.65e-6,
        )
        for z in (2, 3)
        for o in ("true", "false")
        for lo in ("true", "false")
    }


def test_sweep_reports_failed_runs_after_finishing_all(tmp_path, fake_env):
    fake_env["FAKE_DEEPSPEED_RC"] = "1"
    result = run_script(SWEEP / "run_step1_sweep.sh", [str(tmp_path / "sweep")], fake_env, tmp_path)
    assert result.returncode == 1 and len(calls(fake_env)) == 8
    assert "8 run(s) failed" in result.stderr


def test_run_single_defaults_and_offload(tmp_path, fake_env):
    assert (
        run_script(
            SWEEP / "run_single.sh", ["3", "true", "false", str(tmp_path / "o")], fake_env, tmp_path
        ).returncode
        == 0
    )
    args = parse_args(calls(fake_env)[0]["args"])
    assert (args.zero_stage, args.offload, args.lora_dim, args.learning_rate, args.weight_decay) == (
        3,
        True,
        0,
        9.65e-6,
        0.0,
    )
    assert args.model_name_or_path == "facebook/opt-1.3b" and args.data_path == FOUR


def test_cpu_tiny_trains_two_steps(tmp_path, fake_env, tiny_models, local_data):
    out = tmp_path / "out"
    result = run_script(
        SCRIPTS / "cpu/run_tiny.sh",
        [
            str(out),
            "",
            str(tiny_models["opt"]),
            str(local_data),
            "--max_steps",
            "2",
            "--max_seq_len",
            "32",
            "--data_output_path",
            str(tmp_path / "cache"),
        ],
        fake_env,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert not Path(fake_env["FAKE_DEEPSPEED_LOG"]).exists()  # one plain process, no launcher
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "config.json").is_file() and "saving the final model" in (out / "training.log").read_text()


def test_cpu_tiny_without_model_or_data_explains_usage(tmp_path, fake_env):
    result = run_script(SCRIPTS / "cpu/run_tiny.sh", [str(tmp_path / "out")], fake_env, tmp_path)
    assert result.returncode == 2 and "usage: bash run_tiny.sh" in result.stderr


@pytest.mark.slow
def test_cpu_smollm2_script_trains_lora_two_steps(tmp_path, fake_env, tiny_models, local_data):
    out = tmp_path / "out"
    fake_env.update(MODEL_DIR=str(tiny_models["llama"]), DATA=str(local_data))
    extra = [
        "--max_steps",
        "2",
        "--max_seq_len",
        "64",
        "--lora_dim",
        "4",
        "--data_output_path",
        str(tmp_path / "c"),
    ]
    result = run_script(SCRIPTS / "cpu/run_smollm2.sh", [str(out), "", "", *extra], fake_env, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    log = (out / "training.log").read_text()
    assert "lora_layers=14 lora_dim=4 lora_alpha=32" in log
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "dschat_run.json").read_text())["prompt_template"] == "chat_template"


def test_run_prompt_needs_two_models(tmp_path, fake_env):
    result = run_script(STEP1 / "evaluation_scripts/run_prompt.sh", ["only-one"], fake_env, tmp_path)
    assert result.returncode == 2 and "BASELINE_MODEL FINETUNED_MODEL" in result.stderr


# --- The preamble every script sources (common.sh): which interpreter and launcher a script runs ---------------
# The scripts are copied, unchanged, into a fake repository whose .venv/bin, PATH and PYTHON directories hold
# stand-in commands that only record which of them ran; nothing is trained.

FAKE_COMMAND = '#!/bin/sh\necho "{tag} $*" >> "$PREAMBLE_LOG"\n'
PYTHON_SCRIPTS = ("cpu/run_tiny.sh", "cpu/run_smollm2.sh", "../evaluation_scripts/run_prompt.sh")


def fake_commands(bin_dir: Path, prefix: str) -> Path:
    """``bin_dir/python`` and ``bin_dir/deepspeed`` that log ``<prefix>-python``/``<prefix>-deepspeed``."""
    bin_dir.mkdir(parents=True)
    for name in ("python", "deepspeed"):
        (bin_dir / name).write_text(FAKE_COMMAND.format(tag=f"{prefix}-{name}"))
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture
def fake_repo(tmp_path):
    """A copy of the step-1 scripts in a repository with a .venv, and an environment without PYTHON/DEEPSPEED."""
    repo = tmp_path / "repo"
    for folder in ("training_scripts", "evaluation_scripts"):
        shutil.copytree(STEP1 / folder, repo / STEP1.relative_to(STEP1.parents[1]) / folder)
    fake_commands(repo / ".venv" / "bin", "venv")
    path_bin = fake_commands(tmp_path / "path-bin", "path")
    fake_commands(tmp_path / "other" / "bin", "other")
    (tmp_path / "model").mkdir()
    (tmp_path / "data.jsonl").write_text("{}\n")
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHON", "DEEPSPEED", "LAUNCHER_ARGS", "HOSTFILE")
    }
    env.update(
        PATH=f"{path_bin}{os.pathsep}{env['PATH']}",
        PREAMBLE_LOG=str(tmp_path / "ran.log"),
        DATA=str(tmp_path / "data.jsonl"),
        SWEEP_PAUSE_S="0",
    )
    return repo, env


def run_copied_script(repo: Path, name: str, env: dict, cwd: Path) -> tuple[list[str], str]:
    """Run one copied script with the arguments it needs; return the tags of the commands it ran, and stderr."""
    root = cwd
    args = {
        "opt/single_node/sweep/run_single.sh": ["2", "false", "false", str(root / "out")],
        "cpu/run_tiny.sh": [str(root / "out"), "", str(root / "model"), str(root / "data.jsonl")],
        "cpu/run_smollm2.sh": [str(root / "out"), "", str(root / "model")],
        "../evaluation_scripts/run_prompt.sh": [str(root / "model"), str(root / "model")],
    }.get(name, [str(root / "out")])
    script = repo / STEP1.relative_to(STEP1.parents[1]) / "training_scripts" / name
    result = run_script(script, args, env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    log = Path(env["PREAMBLE_LOG"])
    ran = [line.split(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []
    log.unlink(missing_ok=True)
    return ran, result.stderr


PREAMBLE_SCRIPTS = [str(Path(os.path.relpath(p, SCRIPTS))) for p in all_scripts()]


@pytest.mark.parametrize("name", PREAMBLE_SCRIPTS)
def test_every_script_runs_the_repository_venv_when_python_is_unset(name, fake_repo, tmp_path):
    """Issue 18: after `make test`/`make demo` the scripts work as printed, with no activation step."""
    repo, env = fake_repo
    ran, stderr = run_copied_script(repo, name, env, tmp_path)
    tool = "python" if name in PYTHON_SCRIPTS else "deepspeed"
    runs = 8 if name.endswith("run_step1_sweep.sh") else 1
    assert ran == [f"venv-{tool}"] * runs
    said = [line for line in stderr.splitlines() if line.startswith("dschat: python=")]
    assert (
        said
        == [
            f"dschat: python={repo}/.venv/bin/python (the repository's .venv; set PYTHON to use another) "
            f"deepspeed={repo}/.venv/bin/deepspeed"
        ]
        * runs
    )


# (.venv present, PYTHON, DEEPSPEED) -> what a python script and a launcher script run.
CHOICES = {
    "PYTHON wins over the .venv, and its deepspeed comes along": (True, "other/bin/python", None, "other"),
    "a relative PYTHON is taken from where the script is called": (True, "./other/bin/python", None, "other"),
    "DEEPSPEED wins over the one next to the interpreter": (True, None, "other/bin/deepspeed", "venv+other"),
    "no .venv: PATH's python and deepspeed": (False, None, None, "path"),
}


@pytest.mark.parametrize("case", sorted(CHOICES))
def test_the_preamble_picks_the_interpreter_and_the_launcher(case, fake_repo, tmp_path):
    venv, python, deepspeed, expected = CHOICES[case]
    repo, env = fake_repo
    if not venv:
        shutil.rmtree(repo / ".venv")
    for key, value in (("PYTHON", python), ("DEEPSPEED", deepspeed)):
        if value:
            env[key] = value if value.startswith(".") else str(tmp_path / value)
    python_prefix, _, deepspeed_prefix = expected.partition("+")
    deepspeed_prefix = deepspeed_prefix or python_prefix

    ran, stderr = run_copied_script(repo, "cpu/run_tiny.sh", env, tmp_path)
    assert ran == [f"{python_prefix}-python"]
    ran, stderr = run_copied_script(repo, "opt/single_node/run_1.3b.sh", env, tmp_path)
    assert ran == [f"{deepspeed_prefix}-deepspeed"]
    bin_dirs = {
        "venv": repo / ".venv" / "bin",
        "other": tmp_path / "other" / "bin",
        "path": tmp_path / "path-bin",
    }
    (said,) = [line for line in stderr.splitlines() if line.startswith("dschat: ")]
    assert said.startswith(f"dschat: python={bin_dirs[python_prefix] / 'python'} (")
    assert said.endswith(f" deepspeed={bin_dirs[deepspeed_prefix] / 'deepspeed'}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_real_launcher_with_a_localhost_hostfile_runs_two_ranks(tmp_path, fake_env, tiny_models, local_data):
    """multi_node/run_66b.sh through DeepSpeed's own launcher, hostfile 'localhost slots=2', no ssh.

    A hostfile makes the launcher check ssh to its first host and ask it for ``hostname -I``; both are
    skipped with --no_ssh_check and --master_addr. With one host listed it then launches locally.
    """
    env = dict(fake_env)
    del env["DEEPSPEED"]  # the real one, next to PYTHON (the preamble's choice)
    env["PATH"] = env["PATH"].split(os.pathsep, 1)[1]
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env.update(
        HOSTFILE=str(hostfile),
        LAUNCHER_ARGS=f"--no_ssh_check --master_addr 127.0.0.1 --master_port {free_port()}",
    )
    out = tmp_path / "out"
    extra = [
        "--model_name_or_path",
        str(tiny_models["opt8"]),
        "--data_path",
        str(local_data),
        "--dtype",
        "fp32",
        "--data_output_path",
        str(tmp_path / "cache"),
        "--max_steps",
        "1",
        "--max_seq_len",
        "32",
        "--lora_dim",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--per_device_eval_batch_size",
        "2",
    ]
    result = run_script(SCRIPTS / "opt/multi_node/run_66b.sh", [str(out), "", *extra], env, tmp_path)
    log = (out / "training.log").read_text()
    assert result.returncode == 0, log[-4000:]
    assert "deepspeed.launcher.launch" in log and "dist_world_size=2" in log
    assert (out / "config.json").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) == 1
