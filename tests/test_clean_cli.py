"""python -m dschat.clean end to end: loaders' input, atomic outputs main.py reads as they are, the report, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import scripts
from test_clean import chat, clean_records

from dschat.clean import cli
from dschat.errors import run_cli
from dschat.utils.data.local_files import LocalFileDataset

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def messy_dir(root: Path) -> Path:
    """A train.jsonl (messages: 40 clean records and 4 defects) and an eval.jsonl ({prompt, response})."""
    data = root / "data"
    data.mkdir()
    clean = clean_records(40)
    train = [{"messages": m} for m in clean]
    train += [
        {
            "messages": chat(clean[3][0]["content"].lower(), clean[3][1]["content"].lower())
        },  # exact dup (case)
        {"messages": chat("Contact?", "Mail me at ann@example.org, it’s cafÃ© time.")},  # mojibake + email
        {"messages": chat("What is a reef, exactly, in the sea?", "Coral.")},  # eval prompt (short)
        {
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]
        },  # loader skips
    ]
    write_jsonl(data / "train.jsonl", train)
    evaluation = [{"prompt": m[0]["content"], "response": m[1]["content"]} for m in clean_records(8, seed=9)]
    evaluation.append(
        {"prompt": "What is a reef, exactly, in the sea?", "response": "A ridge of rock or coral."}
    )
    write_jsonl(data / "eval.jsonl", evaluation)
    return data


def test_cli_end_to_end_writes_what_main_reads(tmp_path, tiny_models, dist_env):
    data = messy_dir(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in data.iterdir()}
    out = tmp_path / "clean"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dschat.clean",
            "--data_path",
            str(data),
            "--output_dir",
            str(out),
            "--scrub_pii",
            "--model_name_or_path",
            str(tiny_models["opt"]),
            "--max_seq_len",
            "256",
            "--num_proc",
            "2",
            "--data_output_path",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rule" in proc.stdout and "exact_dup" in proc.stdout and "% of input" in proc.stdout
    assert {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in data.iterdir()
    } == before  # inputs untouched
    assert sorted(os.listdir(out)) == ["eval.jsonl", "report", "train.jsonl"]
    assert sorted(os.listdir(out / "report")) == [
        "clean_report.json",
        "clean_report.md",
        "length_histogram.png",
    ]
    report = json.loads((out / "report" / "clean_report.json").read_text())
    removed = {
        name: sum(r["removed"].values()) for name, r in report["rules"].items() if sum(r["removed"].values())
    }
    assert removed == {"skipped": 1, "exact_dup": 1, "contaminated": 1}
    assert report["inputs"] == {"train": 44, "eval": 9} and report["kept"] == {"train": 41, "eval": 9}
    assert (
        report["rules"]["repair"]["changed"]["train"] == 1 and report["rules"]["pii"]["changed"]["train"] == 1
    )
    lines = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert lines[:40] == [{"messages": m} for m in clean_records(40)]
    assert lines[40]["messages"][1]["content"] == "Mail me at <EMAIL>, it’s café time."
    assert "## exact_dup: 1 removed" in (out / "report" / "clean_report.md").read_text()

    # main.py reads the directory as it is: train.jsonl for training, eval.jsonl for evaluation
    raw = LocalFileDataset(str(tmp_path / "cache"), 1234, 0, str(out))
    assert (len(raw.get_train_data()), len(raw.get_eval_data())) == (41, 9)
    step1_main = scripts.step1_main()
    argv = [
        "--model_name_or_path",
        str(tiny_models["opt"]),
        "--data_path",
        str(out),
        "--data_split",
        "10,0,0",
        "--data_output_path",
        str(tmp_path / "cache"),
        "--dtype",
        "fp32",
        "--max_seq_len",
        "64",
        "--per_device_train_batch_size",
        "8",
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path / "model"),
    ]
    assert run_cli(step1_main.main, argv) == 0
    assert len((tmp_path / "model" / "metrics.jsonl").read_text().splitlines()) == 2


def test_bad_input_gets_the_loaders_clear_error_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n" + '{"prompt": "q2", "response": \n')
    out = tmp_path / "out"
    assert run_cli(cli.main, ["--data_path", str(data), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data} line 2: malformed JSON" in err and "Traceback" not in err
    assert not out.exists() or os.listdir(out) == []

    write_jsonl(data, [{"question": "q", "answer": "a"}])
    assert run_cli(cli.main, ["--data_path", str(data), "--output_dir", str(out)]) == 2
    assert "cannot tell the record shape" in capsys.readouterr().err

    assert run_cli(cli.main, ["--data_path", str(tmp_path / "nope.jsonl"), "--output_dir", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_output_dir_never_overwrites_input_or_mixes_with_other_data(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"messages": m} for m in clean_records(3)])
    assert run_cli(cli.main, ["--data_path", str(data), "--output_dir", str(data)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.json").write_text("{}")
    assert run_cli(cli.main, ["--data_path", str(data), "--output_dir", str(other)]) == 2
    assert "already holds data files ['notes.json']" in capsys.readouterr().err
    assert (
        run_cli(
            cli.main,
            ["--data_path", str(data), "--output_dir", str(tmp_path / "o"), "--min_answer_chars", "9999"],
        )
        == 2
    )
    assert "every training record" in capsys.readouterr().err
    assert not (tmp_path / "o" / "train.jsonl").exists() and not any(
        p.name.startswith(".") for p in (tmp_path / "o").iterdir()
    )


def test_a_registry_dataset_local_copy_is_read_through_its_adapter(tmp_path):
    import datasets

    rows = [
        {
            "prompt": f"\n\nHuman: {m[0]['content']}\n\nAssistant:",
            "chosen": " " + m[1]["content"],
            "rejected": " no",
        }
        for m in clean_records(12)
    ]
    copy = tmp_path / "Dahoas" / "rm-static"
    splits = {
        "train": datasets.Dataset.from_list(rows[:10] + rows[:1]),
        "test": datasets.Dataset.from_list(rows[10:]),
    }
    datasets.DatasetDict(splits).save_to_disk(str(copy))
    out = tmp_path / "out"
    argv = ["--data_path", str(copy), "--output_dir", str(out), "--data_output_path", str(tmp_path / "cache")]
    assert run_cli(cli.main, argv) == 0
    train = [json.loads(line)["messages"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert train == clean_records(12)[:10]  # the adapter's dialogue, parsed to messages; the repeat removed
    assert len((out / "eval.jsonl").read_text().splitlines()) == 2
    report = json.loads((out / "report" / "clean_report.json").read_text())
    assert report["rules"]["exact_dup"]["examples"][0]["where"] == f"{copy} train row 11"
