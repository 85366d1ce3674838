"""Bad input to the inference tools, dschat.clean and the data cache: one clear line (or a tolerant read), never a
traceback, nothing half-written trusted."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scripts
from test_bad_inputs import DEEP, foreign_weights_model, resized_config_model, strict_template_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from dschat.config import DataConfig
from dschat.errors import DschatError, run_cli
from dschat.inference import chat, evaluate, generation, loading
from dschat.utils import atomic
from dschat.utils.data import data_utils
from dschat.utils.ds_utils import get_train_ds_config, set_batch_sizes
from dschat.utils.model.model_utils import create_hf_model, load_hf_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CHATBOT = ROOT / "inference" / "chatbot.py"
QA = [{"prompt": f"question {i}?", "response": f"answer {i}."} for i in range(12)]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# --- the chatbot: bytes that are not UTF-8 ------------------------------------------------------------------


def test_piped_bytes_that_are_not_utf8_get_an_answer_and_quit_still_ends(tiny_models):
    """A real process, as a shell pipe feeds it: C locale (lone surrogates) and UTF-8 locale (strict decoding)."""
    command = [sys.executable, str(CHATBOT), "--path", str(tiny_models["opt"]), "--max_new_tokens", "3"]
    for locale in ("C", "C.UTF-8"):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": locale, "PYTHONUTF8": "0"}
        piped = b"\xff\xfe hi\nquit\nnever answered\n"
        proc = subprocess.run(command, input=piped, capture_output=True, cwd=ROOT, env=env, timeout=120)
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0 and "Traceback" not in err, err[-1500:]
        assert len(proc.stdout.splitlines()) == 1  # one answer; quit ended the session before the last line


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_undecodable_stdin_is_read_with_replacement_characters(tiny_models, monkeypatch, capsys, errors):
    """Both ways Python may decode a pipe; end of input (no quit) ends the session too."""
    stdin = io.TextIOWrapper(io.BytesIO(b"\xff\xfe hi\n\xc3 again\n"), encoding="utf-8", errors=errors)
    monkeypatch.setattr(sys, "stdin", stdin)
    model, tokenizer = loading.load_model(str(tiny_models["opt"]), "cpu", "fp32")
    session = chat.ChatSession(model, tokenizer, settings=generation.GenerationSettings(max_new_tokens=2))
    chat.tolerate_undecodable_input()
    chat.chat_loop(session, interactive=False)
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert [m["content"] for m in session.history if m["role"] == "user"] == [
        "\ufffd\ufffd hi",
        "\ufffd again",
    ]
    assert chat.decodable("\udcff hi") == "\ufffd hi"  # how Python hands over such bytes in argv (--system)


def test_a_system_prompt_the_chat_template_refuses_is_one_line_before_the_first_prompt(
    tmp_path, tiny_models, monkeypatch, capsys
):
    model_dir = strict_template_model(tmp_path, tiny_models["llama"])
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    argv = ["--path", model_dir, "--prompt_template", "chat_template", "--system", "be brief"]
    assert run_cli(chat.main, argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    (line,) = error_lines(err)
    assert "roles [system, user]: System role not supported" in line


# --- evaluate: the report path ------------------------------------------------------------------------------


def qa_file(tmp_path) -> str:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QA))
    return str(path)


def test_report_in_a_missing_folder_is_written_there(tiny_models, tmp_path, capsys):
    report = tmp_path / "reports" / "today" / "opt.json"
    argv = ["--model", str(tiny_models["opt"]), "--data_path", qa_file(tmp_path), "--split", "train"]
    argv += ["--max_samples", "2", "--max_new_tokens", "2", "--data_output_path", str(tmp_path / "cache")]
    assert run_cli(evaluate.main, [*argv, "--output", str(report)]) == 0
    assert json.loads(report.read_text())["models"][0]["n_samples"] == 2


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_unwritable_report_path_is_one_line_before_any_model_loads(
    tiny_models, tmp_path, monkeypatch, capsys, where
):
    (tmp_path / "a-file").write_text("x")
    report = tmp_path / "a-file" / "r.json" if where == "under-a-file" else tmp_path
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = ["--model", str(tiny_models["opt"]), "--data_path", qa_file(tmp_path), "--output", str(report)]
    assert run_cli(evaluate.main, argv) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert f"--output {str(report)!r}" in line


# --- inference loading: weights that do not belong to the config --------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (resized_config_model, "model.decoder.embed_tokens.weight is [304, 32] in the weights but [304, 64]"),
        (foreign_weights_model, "its weights lack 37 tensor(s)"),
    ],
)
def test_weights_that_do_not_fit_the_config_are_one_line_not_a_random_model(
    tiny_models, tmp_path, capfd, make, message
):
    model_dir = make(tmp_path, tiny_models["opt8"])
    with pytest.raises(DschatError, match=re.escape(message)):
        loading.load_model(model_dir, "cpu", "fp32")
    assert run_cli(chat.main, ["--path", model_dir]) == 2
    err = capfd.readouterr().err
    assert len(error_lines(err)) == 1 and model_dir in error_lines(err)[0]
    assert "LOAD REPORT" not in err and "Traceback" not in err  # transformers' table is not printed


def test_zero3_training_load_names_the_mismatching_tensors_too(tiny_models, tmp_path, dist_env):
    """ZeRO-3 loads through its own path (torch's multi-line "size mismatch" error): the same one line."""
    model_dir = resized_config_model(tmp_path, tiny_models["opt8"])
    ds_config = set_batch_sizes(get_train_ds_config(False, "fp32", stage=3), 2, 1, 1)
    message = (
        "do not match its config.json (model.decoder.embed_tokens.weight is [304, 32] in the weights but"
    )
    with pytest.raises(DschatError, match=re.escape(message)):
        create_hf_model(AutoModelForCausalLM, model_dir, load_hf_tokenizer(model_dir), ds_config)


def test_adapter_config_that_is_not_json_is_one_line(tmp_path):
    (tmp_path / "adapter_config.json").write_text(DEEP)
    with pytest.raises(DschatError, match="adapter_config.json is not readable JSON"):
        loading.load_model(str(tmp_path), "cpu", "fp32")


def test_prompts_file_with_bad_json_names_the_line(tmp_path):
    prompt_eval = scripts.load_script(scripts.STEP1 / "prompt_eval.py")
    deep, broken = tmp_path / "deep.jsonl", tmp_path / "broken.jsonl"
    deep.write_text('{"prompt": "hi"}\n' + DEEP + "\n")
    broken.write_text('{"prompt": "hi"}\n{"prompt": \n')
    with pytest.raises(DschatError, match=r"deep\.jsonl line 2: the JSON nests too deeply"):
        prompt_eval.read_prompts_file(str(deep))
    with pytest.raises(DschatError, match=r"broken\.jsonl line 2: malformed JSON"):
        prompt_eval.read_prompts_file(str(broken))


# --- dschat.clean: its output (and report) folder, and its inputs -------------------------------------------


@pytest.mark.parametrize("case", ["output-under-a-file", "deep-json-input"])
def test_clean_cli_bad_paths_and_json_are_one_line(tmp_path, capsys, case):
    from dschat.clean.cli import main as clean_main

    data, out = qa_file(tmp_path), tmp_path / "cleaned"
    if case == "output-under-a-file":
        (tmp_path / "a-file").write_text("x")
        out, fragment = tmp_path / "a-file" / "cleaned", "--output_dir"
    else:
        (tmp_path / "deep.jsonl").write_text(DEEP + "\n")
        data, fragment = str(tmp_path / "deep.jsonl"), "deep.jsonl line 1: the JSON nests too deeply"
    argv = ["--data_path", data, "--output_dir", str(out), "--data_output_path", str(tmp_path / "cache")]
    assert run_cli(clean_main, argv) == 2
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert fragment in line and "Traceback" not in err


# --- the data cache: a build killed mid-write is rebuilt, never trusted -------------------------------------


def test_a_build_killed_while_writing_the_cache_is_rebuilt_not_trusted(tiny_models, tmp_path, monkeypatch):
    """SIGKILL skips every cleanup: simulate it by leaving the half-written temp file as a killed process would."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt8"])
    tokenizer.pad_token = tokenizer.eos_token
    data = DataConfig(
        data_path=(qa_file(tmp_path),),
        data_split="10,0,0",
        data_output_path=str(tmp_path / "cache"),
        max_seq_len=32,
    )
    real_savez, writes = np.savez, []

    def killed_mid_write(handle, **arrays):
        writes.append(handle.name)
        if len(writes) == 2:  # the train file, written last as the mark of a complete cache
            handle.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt("killed")
        real_savez(handle, **arrays)

    monkeypatch.setattr(np, "savez", killed_mid_write)
    monkeypatch.setattr(
        atomic.PendingFile, "abort", lambda self: self.handle.close()
    )  # no cleanup after a kill
    with pytest.raises(KeyboardInterrupt):
        data_utils.load_or_build(data, tokenizer, tokenizer.eos_token)
    monkeypatch.undo()
    cache = tmp_path / "cache"
    assert [p.name for p in cache.glob("traindata_*")] == [] and list(cache.glob(".tmp-traindata_*"))

    ((train, _), _), built = data_utils.load_or_build(data, tokenizer, tokenizer.eos_token)
    assert built and len(train) == 11  # 12 records, 10,0,0 split, 90/10 eval carving
    ((again, _), _), built = data_utils.load_or_build(data, tokenizer, tokenizer.eos_token)
    assert not built and np.array_equal(again.input_ids, train.input_ids)
