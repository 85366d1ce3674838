"""prompt_eval.py: upstream's six prompts and header lines, own prompts, other decoding modes, flag errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import scripts
import torch
from transformers import AutoModelForCausalLM

from dschat.errors import DschatError, run_cli
from dschat.run_dir import write_run_info
from dschat.utils.model.model_utils import load_hf_tokenizer

prompt_eval = scripts.load_script(scripts.STEP1 / "prompt_eval.py")

# Spec 10.2, verbatim.
UPSTREAM_ENGLISH = [
    "Human: Please tell me about Microsoft in a few sentence? Assistant:",
    "Human: Explain the moon landing to a 6 year old in a few sentences. Assistant:",
    "Human: Write a short poem about a wise frog. Assistant:",
    "Human: Who was president of the United States in 1955? Assistant:",
    "Human: How does a telescope work? Assistant:",
    "Human: Why do birds migrate south for the winter? Assistant:",
]
BASELINE = "==========Baseline: Greedy========="
FINETUNE = "==========finetune: Greedy========="
END = "====================prompt end============================="


def run(capsys, *argv) -> str:
    assert run_cli(prompt_eval.main, list(argv)) == 0
    return capsys.readouterr().out


def models(tiny_models) -> list[str]:
    # Two different models: the tiny OPT as "base", another seed's OPT as "fine-tune".
    return [
        "--model_name_or_path_baseline",
        str(tiny_models["opt"]),
        "--model_name_or_path_finetune",
        str(tiny_models["opt8"]),
    ]


def expected_greedy(model_dir: Path, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Upstream's greedy output computed directly: the resized model, the prompt decoded with the answer."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.resize_token_embeddings(8 * math.ceil(len(tokenizer) / 8))
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **inputs,
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]


def test_six_prompts_with_upstream_headers_in_order(tiny_models, capsys):
    out = run(capsys, *models(tiny_models), "--max_new_tokens", "4")
    blocks = out.split(END + "\n\n\n")
    assert blocks[-1] == "" and len(blocks) == 7
    tokenizer = load_hf_tokenizer(str(tiny_models["opt"]))
    finetune_outputs = []
    for block, prompt in zip(blocks, UPSTREAM_ENGLISH):
        # Each sequence printed between blank lines: header, "", sequence, "", header, "", sequence, "".
        assert block.startswith(f"{BASELINE}\n\n{prompt}")
        baseline_part, finetune_part = block.split(f"\n\n{FINETUNE}\n\n")
        assert finetune_part.startswith(prompt) and finetune_part.endswith("\n\n")
        finetune_outputs.append(finetune_part[:-2])
    # opt8 needs no resize, so its greedy output is reproducible here (the base's new rows are random).
    assert finetune_outputs[0] == expected_greedy(tiny_models["opt8"], tokenizer, UPSTREAM_ENGLISH[0], 4)


def test_prompt_lists_match_upstream():
    questions = prompt_eval.default_prompts("English")
    assert [prompt_eval.render_prompt(q, "upstream", None) for q in questions] == UPSTREAM_ENGLISH
    assert all(len(questions) == 6 for questions in prompt_eval.QUESTIONS.values())


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".json"])
def test_prompts_file(tiny_models, tmp_path, capsys, suffix):
    path = tmp_path / f"prompts{suffix}"
    own = ["Human: What is the capital of France? Assistant:", "Name a color."]
    if suffix == ".txt":
        path.write_text("\n".join(own) + "\n\n")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in own))
    else:
        path.write_text(json.dumps([{"prompt": p} for p in own]))
    out = run(capsys, *models(tiny_models), "--max_new_tokens", "2", "--prompts_file", str(path))
    blocks = out.split(END + "\n\n\n")[:-1]
    assert len(blocks) == 2
    assert blocks[0].split("\n")[2].startswith(own[0])
    assert (
        blocks[1].split("\n")[2].startswith("Human: Name a color. Assistant:")
    )  # wrapped in upstream's format


def test_beam_sample_mode_returns_several_sequences(tiny_models, capsys):
    argv = [*models(tiny_models), "--max_new_tokens", "3", "--generation", "beam_sample", "--num_beams", "3"]
    out = run(capsys, *argv, "--num_return_sequences", "2", "--language", "Chinese")
    first = out.split(END)[0].split("\n")
    assert first[0] == "==========Baseline: Beam Multinomial Sampling========="
    assert first[2].startswith("Human: 请用几句话介绍一下微软？ Assistant:")
    assert first[5].startswith("Human: 请用几句话介绍一下微软？ Assistant:")  # second returned sequence
    assert first[7] == "==========finetune: Beam Multinomial Sampling========="


def test_flag_problems_are_reported_together(tiny_models, tmp_path):
    bad = [*models(tiny_models), "--num_return_sequences", "2", "--generation", "contrastive"]
    with pytest.raises(DschatError) as err:
        prompt_eval.main([*bad, "--prompts_file", str(tmp_path / "none.txt")])
    message = str(err.value)
    assert (
        "--num_return_sequences 2" in message and "--trust_remote_code" in message and "none.txt" in message
    )


def test_both_models_get_the_fine_tunes_trained_format(tiny_models, tmp_path, capsys):
    """A fine-tune trained with a chat template is compared in that template, the base model too."""
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_models["llama"], tuned)
    write_run_info(tuned, {"prompt_template": "chat_template", "eos_token_appended": False, "args": {}})
    argv = [
        "--model_name_or_path_baseline",
        str(tiny_models["llama"]),
        "--model_name_or_path_finetune",
        str(tuned),
        "--max_new_tokens",
        "2",
        "--device",
        "cpu",
        "--language",
        "English",
    ]
    assert run_cli(prompt_eval.main, argv) == 0
    captured = capsys.readouterr()
    assert "prompt format for both models: chat_template" in captured.err
    assert "Human:" not in captured.out
    assert run_cli(prompt_eval.main, [*argv, "--prompt_template", "upstream"]) == 0
    assert captured.out != (upstream := capsys.readouterr().out) and upstream.count("Human: ") >= 12
