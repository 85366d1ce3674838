"""Damaged checkpoints: verified against their manifest before anything loads, passed over for the newest
intact one with a warning, one clear line when none is intact; ``latest`` never leads outside the run."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import scripts
from test_checkpoint import argv, losses

from dschat.config import OutputConfig
from dschat.errors import DschatError, run_cli
from dschat.utils import checkpoint, manifest

step1 = scripts.step1_main()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("integrity-data") / "qa.jsonl"
    rows = [{"prompt": f"What is {i} times two?", "response": f"It is {2 * i}."} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_models, data_file, dist_env):
    """A real run that kept checkpoints at steps 2, 4 and 6 (the copy each test damages)."""
    out = tmp_path_factory.mktemp("intact") / "run"
    flags = ("--save_interval", "2", "--max_steps", "6", "--save_total_limit", "0")
    assert run_cli(step1.main, argv(tiny_models["opt8"], data_file, out, *flags)) == 0
    return out


def copy_run(finished_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out, ignore=shutil.ignore_patterns(".dschat.lock"))
    return out


def resume_choice(out: Path) -> str:
    return checkpoint.resolve_resume_path(OutputConfig(output_dir=str(out), resume=True))


def biggest_file(step: Path) -> Path:
    return max((p for p in step.iterdir() if p.suffix == ".pt"), key=lambda p: p.stat().st_size)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# Each: id, how the newest checkpoint (step6) is damaged, a fragment of the reason given.
DAMAGE = [
    ("truncated-weights", lambda s: biggest_file(s).write_bytes(biggest_file(s).read_bytes()[:100]), "bytes"),
    ("missing-rng", lambda s: (s / "rng_rank0.json").unlink(), "is missing"),
    ("bit-flip", lambda s: flip_a_byte(biggest_file(s)), "sha256"),
    ("torn-state-json", lambda s: flip_a_byte(s / checkpoint.STATE_FILE), "sha256"),
    ("unreadable-rng", lambda s: (s / "rng_rank0.safetensors").write_bytes(b"\0" * 10), "bytes"),
    ("foreign-pickle", lambda s: (s / "extra_states.pt").write_bytes(b"\x80\x04N."), "not written by dschat"),
    ("no-manifest", lambda s: (s / manifest.MANIFEST).unlink(), None),
    ("garbage-manifest", lambda s: (s / manifest.MANIFEST).write_text("[" * 100000), "unreadable"),
]


@pytest.mark.parametrize("case", DAMAGE, ids=[c[0] for c in DAMAGE])
def test_a_damaged_newest_checkpoint_is_passed_over_with_the_reason(finished_run, tmp_path, caplog, case):
    _, damage, reason = case
    out = copy_run(finished_run, tmp_path)
    steps = out / "checkpoints"
    damage(steps / "step6")
    with caplog.at_level(logging.WARNING):
        assert resume_choice(out) == str(steps / "step4")
    if reason:  # a step dir without a manifest is not a published checkpoint: nothing to warn about
        assert "step6: " in caplog.text and reason in caplog.text, caplog.text


@pytest.mark.parametrize(
    "pointer",
    [b"\xff\xfe garbage", b"../../elsewhere/step6", b"/etc", b"step2/../step6", b"step999"],
    ids=["garbage", "outside", "absolute", "dotdot", "missing"],
)
def test_latest_only_names_a_checkpoint_inside_the_run(finished_run, tmp_path, pointer):
    out = copy_run(finished_run, tmp_path)
    elsewhere = tmp_path / "elsewhere" / "step6"
    shutil.copytree(out / "checkpoints" / "step6", elsewhere)
    (out / "checkpoints" / "latest").write_bytes(pointer)
    assert resume_choice(out) == str(out / "checkpoints" / "step6")  # the newest intact one of this run


def test_latest_as_a_directory_or_a_symlink_out_of_the_run_is_not_followed(finished_run, tmp_path):
    out = copy_run(finished_run, tmp_path)
    steps = out / "checkpoints"
    (steps / "latest").unlink()
    (steps / "latest").mkdir()
    assert resume_choice(out) == str(steps / "step6")
    outside = tmp_path / "outside-step"
    shutil.move(steps / "step6", outside)
    (steps / "step6").symlink_to(outside)
    (steps / "latest").rmdir()
    (steps / "latest").write_text("step6")
    assert resume_choice(out) == str(steps / "step4")


def test_no_intact_checkpoint_is_one_line_naming_each_reason(finished_run, tmp_path, capsys, tiny_models):
    out = copy_run(finished_run, tmp_path)
    for step in (out / "checkpoints").glob("step*"):
        flip_a_byte(biggest_file(step))
    with pytest.raises(DschatError, match="no intact checkpoint") as err:
        resume_choice(out)
    assert all(f"step{n}: " in str(err.value) for n in (2, 4, 6))
    explicit = OutputConfig(output_dir=str(out), resume_from=str(out / "checkpoints" / "step4"))
    with pytest.raises(DschatError, match="not a dschat checkpoint to trust: .*sha256"):
        checkpoint.resolve_resume_path(explicit)


def test_resume_falls_back_through_the_real_entry_point_and_finishes(
    finished_run,
    tmp_path,
    tiny_models,
    data_file,
    dist_env,
    capsys,
):
    out = copy_run(finished_run, tmp_path)
    (out / "config.json").unlink()
    (out / "model.safetensors").unlink()
    finished = losses(out)
    (out / "metrics.jsonl").write_text(
        "".join(line + "\n" for line in (out / "metrics.jsonl").read_text().splitlines()[:4])
    )
    biggest_file(out / "checkpoints" / "step6").write_bytes(b"\x80\x04N.")  # a hostile pickle, say
    flags = ("--save_interval", "2", "--max_steps", "6", "--save_total_limit", "0", "--resume")
    assert run_cli(step1.main, argv(tiny_models["opt8"], data_file, out, *flags)) == 0
    err = capsys.readouterr().err
    assert "passed over damaged checkpoints (step6:" in err and "Traceback" not in err
    assert losses(out) == finished  # steps 5 and 6 retrained from step 4: the same losses
    assert json.loads((out / "checkpoints" / "step6" / manifest.MANIFEST).read_text())["files"]


def test_resume_refuses_edited_data(tmp_path, tiny_models, data_file, dist_env, capsys):
    data = tmp_path / "qa.jsonl"
    shutil.copy(data_file, data)
    out = tmp_path / "run"
    flags = ("--save_interval", "2", "--max_steps", "2")
    assert run_cli(step1.main, argv(tiny_models["opt8"], data, out, *flags)) == 0
    rows = data.read_text().splitlines()
    data.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same records in another order
    assert run_cli(step1.main, argv(tiny_models["opt8"], data, out, "--max_steps", "4", "--resume")) == 2
    err = capsys.readouterr().err
    assert "the tokenised training data differs" in err and "Traceback" not in err
