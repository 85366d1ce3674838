"""An output dir belongs to one run: no second run while one holds it, no mixing with an older run's checkpoints,
no final save over the base model, and a finished run resumes to nothing to do."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import scripts

from dschat.errors import run_cli
from dschat.utils import ownership

step1_main = scripts.step1_main()


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "qa.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"What is {i}?", "response": f"It is {i}."}) + "\n" for i in range(40))
    )
    return path


def argv(model, data, tmp_path, out, *extra):
    return scripts.main_argv(model, data, tmp_path / "cache", "--output_dir", str(out), *extra)


def steps(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step*"))


def test_a_fresh_run_never_mixes_with_an_older_runs_checkpoints(
    tmp_path, tiny_models, qa_file, dist_env, capsys
):
    out, model = tmp_path / "out", tiny_models["llama"]
    assert run_cli(step1_main.main, argv(model, qa_file, tmp_path, out, "--save_interval", "4")) == 0
    assert steps(out) == ["step12", "step16"] and len((out / "metrics.jsonl").read_text().splitlines()) == 18
    capsys.readouterr()
    fresh = argv(model, qa_file, tmp_path, out, "--save_interval", "2", "--max_steps", "3")
    assert run_cli(step1_main.main, fresh) == 2
    error = capsys.readouterr().err
    assert "holds another run's checkpoints (step12, step16)" in error and "--overwrite_output_dir" in error
    assert steps(out) == ["step12", "step16"]  # nothing touched
    assert run_cli(step1_main.main, [*fresh, "--overwrite_output_dir"]) == 0
    assert steps(out) == ["step2"]  # the old run's are gone, not winning --save_total_limit over the new ones
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # this run's rows only


def test_the_final_save_never_overwrites_the_model_being_trained(
    tmp_path, tiny_models, qa_file, dist_env, capsys
):
    model = tiny_models["llama"]
    assert run_cli(step1_main.main, argv(model, qa_file, tmp_path, model, "--max_steps", "1")) == 2
    assert "is the model being trained" in capsys.readouterr().err


def test_a_finished_run_resumes_to_nothing_to_do(tmp_path, tiny_models, qa_file, dist_env, capsys):
    out, model = tmp_path / "out", tiny_models["llama"]
    done = argv(model, qa_file, tmp_path, out, "--max_steps", "4", "--save_interval", "4")
    assert run_cli(step1_main.main, done) == 0
    rows = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert run_cli(step1_main.main, [*done, "--resume"]) == 0
    assert "nothing to train" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == rows and steps(out) == ["step4"]  # not one update too many
    assert (out / "config.json").is_file()


def test_a_second_run_into_a_dir_in_use_stops_naming_the_holder(
    tmp_path, tiny_models, qa_file, dist_env, capsys
):
    """Two real runs: the first holds the dir (a long run), the second stops at once with the holder's pid."""
    out, model = tmp_path / "out", tiny_models["llama"]
    env = scripts.process_env()
    first = subprocess.Popen(
        [sys.executable, str(scripts.MAIN), *argv(model, qa_file, tmp_path, out, "--num_train_epochs", "50")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = out / ownership.LOCK_NAME
        deadline = time.time() + 120
        while time.time() < deadline and f'"pid": {first.pid}' not in (
            lock.read_text() if lock.exists() else ""
        ):
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.2)
        assert run_cli(step1_main.main, argv(model, qa_file, tmp_path, out, "--max_steps", "1")) == 2
        error = capsys.readouterr().err
        assert f"is in use by a running dschat run (pid {first.pid} on" in error
    finally:
        first.kill()
        first.wait()
    assert run_cli(step1_main.main, argv(model, qa_file, tmp_path, out, "--max_steps", "1")) == 0  # freed
