"""Evaluation: response perplexity against a hand-masked forward pass, BLEU wiring, batching, report and CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from dschat.errors import run_cli
from dschat.inference import evaluate, generation
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
    model, tokenizer = generation.load_model(str(tiny_models["opt"]), "cpu", "fp32")
    samples = [(q, a) for q, a in QA]
    # Batch of 2 with different lengths: padding must not change anything.
    ppl = evaluate.response_perplexity(
        model, tokenizer, samples, "upstream", tokenizer.eos_token, batch_size=2
    )
    pairs = [(f" Human: {q} Assistant:", f" {a}</s>") for q, a in QA]
    assert ppl == pytest.approx(manual_perplexity(model, pairs, tokenizer, True), rel=1e-5)
    # Without the EOS the answer has one token less to score: a different number.
    no_eos = evaluate.response_perplexity(model, tokenizer, samples, "upstream", "", batch_size=3)
    assert no_eos == pytest.approx(
        manual_perplexity(model, [(p, a[:-4]) for p, a in pairs], tokenizer, True), rel=1e-5
    )
    assert no_eos != pytest.approx(ppl)


def test_response_perplexity_chat_template_matches_manual(tiny_models):
    model, tokenizer = generation.load_model(str(tiny_models["llama"]), "cpu", "fp32")
    samples = [
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}], a) for q, a in QA
    ]
    ppl = evaluate.response_perplexity(model, tokenizer, samples, "chat_template", batch_size=2)
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
    model, tokenizer = generation.load_model(str(tiny_models["opt"]), "cpu", "fp32")
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
    model, tokenizer = generation.load_model(str(tiny_models["llama"]), "cpu", "fp32")
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


def test_cli_writes_report_and_prints_table(tiny_models, data_dir, tmp_path, capsys):
    trained = tmp_path / "trained"
    shutil.copytree(tiny_models["llama"], trained)
    write_run_info(trained, {"prompt_template": "chat_template", "eos_token_appended": False, "args": {}})
    output = tmp_path / "report.json"
    argv = [
        "--model",
        str(tiny_models["opt"]),
        str(trained),
        "--data_path",
        str(data_dir),
        "--max_samples",
        "2",
    ]
    argv += ["--max_new_tokens", "4", "--batch_size", "2", "--data_output_path", str(tmp_path / "cache")]
    assert run_cli(evaluate.main, [*argv, "--output", str(output)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "ppl", "BLEU", "answer_tokens", "tokens/s"]
    assert [row.split()[0] for row in table[1:]] == [str(tiny_models["opt"]), str(trained)]
    report = json.loads(output.read_text())
    assert [m["prompt_template"] for m in report["models"]] == [
        "upstream",
        "chat_template",
    ]  # from dschat_run.json
    for model_report in report["models"]:
        assert set(model_report) == set(REPORT_SCHEMA)
        assert model_report["n_samples"] == len(model_report["samples"]) == 2
        assert model_report["ppl"] > 1 and model_report["tokens_per_second"] > 0
    assert report["models"][1]["samples"][0]["prompt"].endswith("<|im_start|>assistant\n")


def test_bad_model_path_is_one_line_error(data_dir, tmp_path, capsys):
    argv = ["--model", str(tmp_path / "nope"), "--data_path", str(data_dir), "--batch_size", "0"]
    assert run_cli(evaluate.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "--batch_size 0" in err[0]
