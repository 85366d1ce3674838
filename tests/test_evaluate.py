"""Evaluation: response perplexity against a hand-masked forward pass, BLEU wiring, batching, report and CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from dschat import run_dir
from dschat.errors import DschatError, run_cli
from dschat.inference import evaluate, generation, loading, perplexity
from dschat.run_dir import write_run_info

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How does a telescope work?", "It gathers light with lenses or mirrors, then it focuses it."),
    ("Name a color.", "Blue."),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Local train/eval files: plain QA and a multi-turn conversation."""
    root = tmp_path_factory.mktemp("evaldata")
    (root / "train.jsonl").write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in QA))
    chat = {
        "messages": [
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hi, how can I help?"},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    }
    single = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA[:2]
    ]
    rows = [*single, chat]  # one record shape per file
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def manual_perplexity(model, pairs: list[tuple[str, str]], tokenizer, add_specials: bool) -> float:
    """exp(mean NLL of answer tokens): one plain forward pass per sample, prompt tokens masked by count."""
    total, count = 0.0, 0
    for prompt, answer in pairs:
        n_prompt = len(tokenizer(prompt, add_special_tokens=add_specials)["input_ids"])
        ids = tokenizer(prompt + answer, add_special_tokens=add_specials, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = F.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        for t in range(n_prompt, ids.shape[1]):
            total -= logprobs[t - 1, ids[0, t]].item()
            count += 1
    return math.exp(total / count)


def test_response_perplexity_upstream_format_matches_manual(tiny_models):
    model, tokenizer = loading.load_model(str(tiny_models["opt"]), "cpu", "fp32")
    samples = [(q, a) for q, a in QA]
    # Batch of 2 with different lengths: padding must not change anything.
    ppl = perplexity.response_perplexity(
        model, tokenizer, samples, "upstream", tokenizer.eos_token, batch_size=2
    )
    pairs = [(f" Human: {q} Assistant:", f" {a}</s>") for q, a in QA]
    assert ppl == pytest.approx(manual_perplexity(model, pairs, tokenizer, True), rel=1e-5)
    # Without the EOS the answer has one token less to score: a different number.
    no_eos = perplexity.response_perplexity(model, tokenizer, samples, "upstream", "", batch_size=3)
    assert no_eos == pytest.approx(
        manual_perplexity(model, [(p, a[:-4]) for p, a in pairs], tokenizer, True), rel=1e-5
    )
    assert no_eos != pytest.approx(ppl)


def test_response_perplexity_chat_template_matches_manual(tiny_models):
    model, tokenizer = loading.load_model(str(tiny_models["llama"]), "cpu", "fp32")
    samples = [
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}], a) for q, a in QA
    ]
    ppl = perplexity.response_perplexity(model, tokenizer, samples, "chat_template", batch_size=2)
    pairs = [
        (
            f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n",
            f"{a}<|im_end|>\n",
        )
        for q, a in QA
    ]
    assert ppl == pytest.approx(manual_perplexity(model, pairs, tokenizer, False), rel=1e-5)


def test_bleu_of_references_against_themselves_is_100_and_argument_order():
    references = [a for _, a in QA]
    score, signature = evaluate.corpus_bleu(references, references)
    assert score == pytest.approx(100.0)
    assert signature.startswith("nrefs:1|") and "version:" in signature
    short = ["The capital of France is Paris.", "It gathers light.", "Blue."]
    score, _ = evaluate.corpus_bleu(short, references)
    assert score == pytest.approx(sacrebleu.corpus_bleu(short, [references]).score)
    assert score != pytest.approx(sacrebleu.corpus_bleu(references, [short]).score)  # brevity penalty side


# The JSON report's keys, as users' scripts read them (pinned here, not imported from the module).
REPORT_SCHEMA = (
    "model",
    "prompt_template",
    "ppl",
    "bleu",
    "bleu_signature",
    "mean_answer_tokens",
    "tokens_per_second",
    "n_samples",
    "samples",
)


def test_report_keys_and_bleu_wiring_with_a_fake_generator(tiny_models, monkeypatch):
    model, tokenizer = loading.load_model(str(tiny_models["opt"]), "cpu", "fp32")
    samples = [(q, a) for q, a in QA]

    def echo_references(model, tokenizer, samples, *args, **kwargs):
        return {
            "prompts": [q for q, _ in samples],
            "answers": [a for _, a in samples],
            "new_tokens": [5] * 3,
            "seconds": 0.5,
        }

    monkeypatch.setattr(evaluate, "generate_answers", echo_references)
    report = evaluate.evaluate_loaded(model, tokenizer, samples, progress=False)
    assert tuple(report) == REPORT_SCHEMA
    assert report["bleu"] == pytest.approx(100.0)
    assert report["tokens_per_second"] == pytest.approx(30.0)
    lengths = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for _, a in QA]
    assert report["mean_answer_tokens"] == pytest.approx(sum(lengths) / 3)
    assert report["samples"][1] == {"prompt": QA[1][0], "answer": QA[1][1], "reference": QA[1][1]}


def test_batched_left_padded_generation_equals_one_by_one(tiny_models):
    model, tokenizer = loading.load_model(str(tiny_models["llama"]), "cpu", "fp32")
    texts = [f" Human: {q} Assistant:" for q, _ in QA]
    settings = generation.GenerationSettings(max_new_tokens=6)
    stop = generation.stop_token_ids(model, tokenizer, "upstream")
    batched = generation.generate_batch(model, tokenizer, texts, settings, stop)
    singles = [generation.generate_batch(model, tokenizer, [t], settings, stop).texts[0] for t in texts]
    assert batched.texts == singles
    assert all(0 < n <= 6 for n in batched.new_tokens)


def test_load_samples_from_local_files(data_dir, tmp_path):
    samples = evaluate.load_samples(str(data_dir), "eval", 0, str(tmp_path / "cache"), 1234)
    assert len(samples) == 3
    assert samples[0] == ([{"role": "user", "content": QA[0][0]}], QA[0][1])
    messages, reference = samples[2]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"] and reference == "Paris."
    assert len(evaluate.load_samples(str(data_dir), "train", 2, str(tmp_path / "cache"), 1234)) == 2


def test_cli_compares_every_model_in_one_format_and_writes_the_report(
    tiny_models, data_dir, tmp_path, capsys
):
    """A base model (no run info) is scored in the format the fine-tune was trained with, and the output says so."""
    trained = tmp_path / "trained"
    shutil.copytree(tiny_models["llama"], trained)
    write_run_info(trained, {"prompt_template": "chat_template", "eos_token_appended": False, "args": {}})
    output = tmp_path / "report.json"
    argv = [
        "--model",
        str(tiny_models["llama"]),
        str(trained),
        "--data_path",
        str(data_dir),
        "--max_samples",
        "2",
    ]
    argv += ["--max_new_tokens", "4", "--batch_size", "2", "--data_output_path", str(tmp_path / "cache")]
    assert run_cli(evaluate.main, [*argv, "--output", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"prompt format: chat_template (the format {trained} was trained with")
    assert lines[1].split() == ["model", "ppl", "BLEU", "answer_tokens", "tokens/s"]
    assert [row.split()[0] for row in lines[2:]] == [str(tiny_models["llama"]), str(trained)]
    report = json.loads(output.read_text())
    assert [m["prompt_template"] for m in report["models"]] == ["chat_template", "chat_template"]
    for model_report in report["models"]:
        assert set(model_report) == set(REPORT_SCHEMA)
        assert model_report["n_samples"] == len(model_report["samples"]) == 2
        assert model_report["ppl"] > 1 and model_report["tokens_per_second"] > 0
        assert model_report["samples"][0]["prompt"].endswith("<|im_start|>assistant\n")
    forced = [*argv, "--prompt_template", "upstream"]
    assert (
        run_cli(evaluate.main, forced) == 0
        and "prompt format: upstream (--prompt_template)" in capsys.readouterr().out
    )
    # A base model whose tokenizer has no template cannot be compared in the fine-tune's template: say how.
    assert run_cli(evaluate.main, ["--model", str(tiny_models["opt"]), str(trained), *argv[3:]]) == 2
    assert "--prompt_template upstream" in capsys.readouterr().err


def test_models_trained_in_different_formats_need_a_choice(tiny_models, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for path, template in ((first, "chat_template"), (second, "upstream")):
        path.mkdir()
        write_run_info(
            path, {"prompt_template": template, "eos_token_appended": template == "upstream", "args": {}}
        )
    with pytest.raises(DschatError, match="different prompt formats"):
        run_dir.comparison_template([str(first), str(second)])
    assert run_dir.comparison_template([str(first), str(second)], "upstream") == (
        "upstream",
        "--prompt_template",
    )


def test_bad_model_path_is_one_line_error(data_dir, tmp_path, capsys):
    argv = ["--model", str(tmp_path / "nope"), "--data_path", str(data_dir), "--batch_size", "0"]
    assert run_cli(evaluate.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "--batch_size 0" in err[0]


def test_greedy_answers_do_not_depend_on_the_batch_size(tiny_models, tmp_path):
    """Through the CLI: the same answers at --batch_size 1, 3 and 8 (prompts of several lengths, repeats too)."""
    questions = ["Hi?", "What is two?", "Name a colour.", "Hi?", "Why is the sky blue today?", "What is one?"]
    rows = [{"prompt": q * (1 + i % 3), "response": "Fine."} for i, q in enumerate(questions * 2)]
    data = tmp_path / "qa"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (data / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    answers = []
    for batch_size in ("1", "3", "8"):
        out = tmp_path / f"report{batch_size}.json"
        argv = [
            "--model",
            str(tiny_models["llama"]),
            "--data_path",
            str(data),
            "--max_samples",
            "0",
            "--max_new_tokens",
            "12",
            "--batch_size",
            batch_size,
            "--data_output_path",
            str(tmp_path / "c"),
            "--output",
            str(out),
        ]
        assert run_cli(evaluate.main, argv) == 0
        answers.append([s["answer"] for s in json.loads(out.read_text())["models"][0]["samples"]])
    assert len(answers[0]) == 12 and answers[0] == answers[1] == answers[2]


def test_generation_batches_never_pad(tiny_models, monkeypatch):
    """Why the answers above agree: every generate call gets prompts of one token length (no padding, whose
    masked arithmetic rounds differently and can flip a greedy near-tie)."""
    model, tokenizer = loading.load_model(str(tiny_models["llama"]), "cpu", "fp32")
    seen, real = [], generation.generate_batch

    def spy(model, tokenizer, texts, *args, **kwargs):
        seen.append({len(tokenizer(t)["input_ids"]) for t in texts})
        return real(model, tokenizer, texts, *args, **kwargs)

    monkeypatch.setattr(generation, "generate_batch", spy)
    samples = [(q * n, "a") for n in (1, 2, 3) for q in ("Hi?", "What is it?")] * 2
    settings = generation.GenerationSettings(max_new_tokens=2)
    out = evaluate.generate_answers(
        model, tokenizer, samples, "upstream", settings, batch_size=3, progress=False
    )
    assert len(out["answers"]) == len(samples) and all(len(lengths) == 1 for lengths in seen)
    assert max(len(batch) for batch in generation.equal_length_batches([5, 5, 5, 5, 7], 3)) == 3
