"""The chat CLI and session: piped and interactive use, prompt formats, history trimming, PEFT adapters."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from dschat.errors import run_cli
from dschat.inference import chat, generation, loading
from dschat.run_dir import write_run_info
from dschat.utils.data import prompts

ROOT = Path(__file__).resolve().parents[1]
CHATBOT = ROOT / "inference" / "chatbot.py"
SESSION = (
    "Hello there\nWhat is the capital of France?\nclear\nHow does a telescope work?\nquit\nnever answered\n"
)


class TtyInput(io.StringIO):
    """Typed input: looks like a terminal to the CLI."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def trained(tiny_models, tmp_path_factory) -> Path:
    """A tiny 'step-1 output': the tiny OPT plus dschat_run.json saying it was trained in upstream's format."""
    directory = tmp_path_factory.mktemp("trained") / "model"
    shutil.copytree(tiny_models["opt"], directory)
    write_run_info(directory, {"prompt_template": "upstream", "eos_token_appended": True, "args": {}})
    return directory


def run_piped(script: Path, model_dir: Path, text: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(script), "--path", str(model_dir), "--max_new_tokens", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, input=text, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)


def greedy_answer(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """The answer computed independently: plain generate on upstream's training-format prompt, cut at Human:."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    return text.split("Human:")[0].strip()


def test_piped_session_is_deterministic_and_in_training_format(trained, tmp_path):
    first = run_piped(CHATBOT, trained, SESSION, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    answers = first.stdout.splitlines()
    assert len(answers) == 3  # two turns, clear, one turn, quit: the line after quit is never read
    assert "[history cleared]" in first.stderr
    banner = first.stderr.split("\n[history")[0]  # stdout stays answers only; the banner is on stderr
    assert f"model {trained} on cpu (float32)" in banner and "prompt format: upstream; greedy" in banner
    expected = greedy_answer(trained, " Human: Hello there Assistant:", 8)
    assert answers[0] == chat.escape_line(expected)
    # After `clear` the third prompt is answered without history: same as a fresh first turn.
    assert answers[2] == chat.escape_line(
        greedy_answer(trained, " Human: How does a telescope work? Assistant:", 8)
    )
    # Upstream's wrapper from another working directory gives the same (greedy) answers.
    second = run_piped(ROOT / "chat.py", trained, SESSION, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_generation_prompts_for_each_template(tiny_models):
    history = [
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
    ]
    assert prompts.generation_prompt(history, "upstream") == " Human: u1 Assistant: a1 Human: u2 Assistant:"
    assert prompts.generation_prompt(history, "upstream_chatbot") == (
        " Human: u1\n Assistant: a1\n\n Human: u2\n Assistant: "
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    with_system = [{"role": "system", "content": "Be brief."}, *history]
    assert prompts.generation_prompt(with_system, "chat_template", tokenizer) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nu1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n<|im_start|>user\nu2<|im_end|>\n<|im_start|>assistant\n"
    )


def test_session_renders_system_prompt_and_stops_at_end_of_turn(tiny_models):
    model, tokenizer = loading.load_model(str(tiny_models["llama"]), "cpu", "fp32")
    session = chat.ChatSession(model, tokenizer, "chat_template", system="Be brief.")
    text = tokenizer.decode(session.prompt_ids("hi"))
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in session.stop_ids
    assert tokenizer.eos_token_id in session.stop_ids
    assert session.stop_strings == ()  # the Human: cut is for upstream's formats only
    upstream = chat.ChatSession(model, tokenizer, "upstream")
    assert tokenizer.decode(upstream.prompt_ids("hi"), skip_special_tokens=True) == " Human: hi Assistant:"
    assert upstream.stop_strings == ("Human:",)


def test_streamer_never_shows_the_hallucinated_human_turn(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt"])
    shown = []
    streamer = generation.HoldBackStreamer(tokenizer, shown.append, ("Human:",))
    for chunk in (" The answer", " is 4. Hu", "man: and more", " text"):
        streamer.on_finalized_text(chunk)
    streamer.on_finalized_text("", stream_end=True)
    assert "".join(shown) == "The answer is 4. "
    assert streamer.text.strip() == "The answer is 4."
    assert generation.cut_at_markers("a Human: b Human: c", ("Human:",)) == "a "


def test_history_is_trimmed_from_the_oldest_turn(tiny_models, tmp_path, monkeypatch, capsys):
    short = tmp_path / "short-context"
    shutil.copytree(tiny_models["llama"], short)
    config = AutoConfig.from_pretrained(short)
    config.max_position_embeddings = 64
    config.save_pretrained(short)
    turns = [f"the fox {i}" for i in range(6)] + ["word " * 80]  # ~10 prompt tokens each, then one too long
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(turns) + "\n"))
    assert run_cli(chat.main, ["--path", str(short), "--max_new_tokens", "8"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == len(turns)
    assert re.search(
        r"history trimmed: dropped the \d+ oldest turn\(s\) to fit the model's 64-token context", err
    )

    model, tokenizer = loading.load_model(str(short), "cpu", "fp32")
    session = chat.ChatSession(model, tokenizer, "upstream", generation.GenerationSettings(max_new_tokens=8))
    dropped = 0
    for turn in turns[:6]:
        ids = session.prompt_ids(turn)
        dropped += session.trimmed_turns
        assert len(ids) + 8 <= 64
        session.reply(turn)
    assert dropped > 0
    # Whole turns (user + answer) go, oldest first; the newest are kept in order.
    kept = [m["content"] for m in session.history if m["role"] == "user"]
    assert 0 < len(kept) < 6 and kept == turns[6 - len(kept) : 6]
    assert len(session.prompt_ids(turns[-1])) == 64 - 8  # a single over-long turn keeps its last tokens


def test_ctrl_d_ends_an_interactive_session(trained, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", TtyInput("Hello there\n"))  # no quit: the input just ends
    assert run_cli(chat.main, ["--path", str(trained), "--max_new_tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert chat.INPUT_PROMPT in out
    assert "------------------------------ Round 1 ------------------------------" in out
    assert out.endswith("\n")


def test_peft_adapter_dir_loads_base_and_applies_adapter(tiny_models, tmp_path, monkeypatch, capsys):
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    assert not (tmp_path / "adapter" / "config.json").exists()

    merged, _ = loading.load_model(str(tmp_path / "adapter"), "cpu", "fp32")
    plain = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(merged.state_dict()[weight], plain.state_dict()[weight])
    assert torch.equal(merged.state_dict()["lm_head.weight"], plain.state_dict()["lm_head.weight"])

    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    assert run_cli(chat.main, ["--path", str(tmp_path / "adapter"), "--max_new_tokens", "4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1


def test_bad_flags_and_paths_give_one_line_errors(tiny_models, tmp_path, capsys):
    assert run_cli(chat.main, ["--path", str(tmp_path / "missing")]) == 2
    assert run_cli(chat.main, ["--path", str(tmp_path), "--max_new_tokens", "0", "--top_p", "2"]) == 2
    assert run_cli(chat.main, ["--path", str(tiny_models["opt"]), "--prompt_template", "chat_template"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and "has no chat template" in lines[2]
    assert "does not exist" in lines[0]
    assert "--max_new_tokens 0" in lines[1] and "--top_p 2" in lines[1]


def test_escape_line_keeps_one_answer_per_line():
    assert chat.escape_line("a\nb\\c") == "a\\nb\\\\c"
