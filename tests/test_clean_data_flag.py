"""--clean_data in main.py and prepare_data: clean data trains exactly as before, dirty data loses its defects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scripts

from dschat import prepare_data
from dschat.errors import run_cli
from dschat.utils.data.tokenized import TokenizedSamples

step1_main = scripts.step1_main()

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def distinct_rows(count: int) -> list[dict]:
    """Records no rule touches: different words, ordinary answers, short enough for the model."""
    return [
        {
            "prompt": f"Tell me about {WORDS[i % 16]} number {i} and {WORDS[(i * 7) % 16]}.",
            "response": f"{WORDS[(i * 3) % 16].title()} {i} is a fine {WORDS[(i * 5) % 16]} indeed.",
        }
        for i in range(count)
    ]


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def flags(model, data, tmp_path, out, *extra):
    return scripts.main_argv(
        model, data, tmp_path / "cache", "--output_dir", str(out), *extra, max_seq_len=200, batch_size=4
    )


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def cached_train(tmp_path) -> list[np.ndarray]:
    """The train samples of every train cache in the cache dir."""
    found = []
    for path in sorted((tmp_path / "cache").glob("traindata_*.npz")):
        samples, _ = TokenizedSamples.load(str(path))
        found.append(samples.input_ids)
    return found


def test_clean_data_changes_nothing_on_clean_data(tmp_path, tiny_models, dist_env):
    data = write(tmp_path / "clean.jsonl", distinct_rows(40))
    model = tiny_models["llama"]
    assert run_cli(step1_main.main, flags(model, data, tmp_path, tmp_path / "plain")) == 0
    assert run_cli(step1_main.main, flags(model, data, tmp_path, tmp_path / "cleaned", "--clean_data")) == 0
    assert losses(tmp_path / "cleaned") == losses(tmp_path / "plain")  # bit for bit
    plain, cleaned = cached_train(tmp_path)  # two keys (the rules are in the key), the same samples
    assert np.array_equal(plain, cleaned)


def test_clean_data_removes_duplicates_and_eval_copies_before_the_split(
    tmp_path, tiny_models, dist_env, capsys
):
    rows = distinct_rows(30)
    dirty = [
        *rows,
        dict(rows[3]),
        {**rows[5], "prompt": rows[5]["prompt"].upper()},
        {"prompt": "Hi", "response": " "},
    ]
    folder = tmp_path / "dirty"
    folder.mkdir()
    write(folder / "train.jsonl", dirty)
    write(folder / "eval.jsonl", [rows[7], *distinct_rows(40)[32:36]])  # rows[7] also sits in train
    out = tmp_path / "out"
    assert run_cli(step1_main.main, flags(tiny_models["llama"], folder, tmp_path, out, "--clean_data")) == 0
    run = json.loads((out / "dschat_run.json").read_text())
    assert run["args"]["clean"]["exact_dedup"] is True  # the rules are recorded with the run
    report = capsys.readouterr().err.split("--clean_data", 1)[1]
    cells = [line.split() for line in report.splitlines()[:16]]
    removed = {row[0]: int(row[1]) for row in cells if len(row) > 2 and row[1].isdigit()}
    # The empty answer is skipped by the loader itself (counted as "skipped"), the rest by the rules.
    assert (removed["exact_dup"], removed["contaminated"], removed["skipped"]) == (2, 1, 1), report
    (samples, _) = TokenizedSamples.load(str(next((tmp_path / "cache").glob("traindata_*.npz"))))
    assert len(samples) == 29  # 33 records - 2 duplicates - 1 eval copy - 1 empty answer


def test_prepare_data_builds_the_cleaned_cache_main_reuses(tmp_path, tiny_models, dist_env, capsys):
    data = write(tmp_path / "d.jsonl", [*distinct_rows(20), distinct_rows(20)[0]])
    common = [
        "--model_name_or_path",
        str(tiny_models["llama"]),
        "--data_path",
        str(data),
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(tmp_path / "cache"),
        "--max_seq_len",
        "200",
        "--clean_data",
    ]
    assert run_cli(prepare_data.main, common) == 0
    assert "--clean_data" in capsys.readouterr().err  # the cleaning report, printed by the build
    out = tmp_path / "out"
    argv = flags(tiny_models["llama"], data, tmp_path, out, "--clean_data", "--max_steps", "1")
    assert run_cli(step1_main.main, argv) == 0
    log = capsys.readouterr().err
    assert "data report (cache," in log and "--clean_data" not in log  # reused: nothing cleaned twice


@pytest.mark.parametrize("bad", [["--near_dup_threshold", "2"], ["--min_answer_chars", "-1"]])
def test_bad_cleaning_flags_are_one_line(tmp_path, tiny_models, dist_env, capsys, bad):
    data = write(tmp_path / "d.jsonl", distinct_rows(8))
    assert (
        run_cli(
            step1_main.main, flags(tiny_models["llama"], data, tmp_path, tmp_path / "o", "--clean_data", *bad)
        )
        == 2
    )
    assert capsys.readouterr().err.count("error:") == 1
