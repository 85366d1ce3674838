"""A saved model describes its own prompt format: its chat template gives the ids training and the chatbot build."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, pipeline

from dschat import run_dir
from dschat.inference import generation, loading
from dschat.inference.chat import ChatSession
from dschat.utils.data import chat_export, data_utils, prompts
from dschat.utils.data.raw_datasets import get_raw_dataset
from dschat.utils.module.lora import convert_linear_layer_to_lora, lora_modules
from dschat.utils.save import save_final_model, save_hf_format

SYSTEM = {"role": "system", "content": "You are Pip, a cheerful lighthouse keeper."}
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [SYSTEM, {"role": "user", "content": "hello there"}],
    [
        SYSTEM,
        {"role": "user", "content": "How does a telescope work?"},
        {"role": "assistant", "content": "It gathers light with lenses or mirrors."},
        {"role": "user", "content": "Write a short poem about a wise frog."},
    ],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hi, how can I help?"},
        {"role": "user", "content": 'Quotes " and \\ backslashes, {{ braces }} and\nnew lines'},
    ],
]
ANSWER = {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}
# (tiny model, prompt format): every training format, with and without BOS, with and without a template.
CASES = [
    ("opt", prompts.UPSTREAM),
    ("llama", prompts.UPSTREAM),
    ("gpt2", prompts.UPSTREAM),
    ("llama", prompts.CHAT_TEMPLATE),
]


def saved_model(tiny_models, tmp_path, arch: str, prompt_template: str):
    """The tiny model saved the way a training run saves it (with run info)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch])
    out = tmp_path / f"{arch}-{prompt_template}"
    save_hf_format(model, tokenizer, out, run_info=run_dir.run_info(prompt_template, {}))
    return out, tokenizer


def chatbot_ids(path, prompt_template: str, messages: list[dict]) -> list[int]:
    """The prompt ids dschat's chatbot builds for ``messages`` (system, history, then the last user turn)."""
    model, tokenizer = loading.load_model(str(path))
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    settings = generation.GenerationSettings(max_new_tokens=16)  # room for the whole history in 256 positions
    session = ChatSession(model, tokenizer, prompt_template, settings, system=system)
    session.history = [m for m in messages[:-1] if m["role"] != "system"]
    return session.prompt_ids(messages[-1]["content"])


def training_ids(tmp_path, tokenizer, prompt_template: str) -> list[tuple[list[dict], list[int]]]:
    """(conversation, ids) as the data pipeline renders and tokenises ``{messages}`` records."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [*c, ANSWER]}) + "\n" for c in CONVERSATIONS))
    raw = get_raw_dataset(str(data), str(tmp_path / "cache"), 1234, 0)
    rows = [*raw.get_train_data(), *raw.get_eval_data()]
    add_specials = prompt_template != prompts.CHAT_TEMPLATE
    result = []
    for row in rows:
        text, _ = data_utils.render_sample(raw, row, prompt_template, tokenizer, tokenizer.eos_token)
        result.append(
            (raw.get_conversation(row), tokenizer(text, add_special_tokens=add_specials)["input_ids"])
        )
    assert len(result) == len(CONVERSATIONS)
    return result


@pytest.mark.parametrize("arch,prompt_template", CASES)
def test_saved_chat_template_gives_the_chatbot_and_training_ids(tiny_models, tmp_path, arch, prompt_template):
    out, train_tokenizer = saved_model(tiny_models, tmp_path, arch, prompt_template)
    saved = AutoTokenizer.from_pretrained(out)
    for messages in CONVERSATIONS:
        ids = saved.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        assert list(ids) == chatbot_ids(out, prompt_template, messages), messages
        assert (
            list(ids)
            == train_tokenizer(
                prompts.generation_prompt(messages, prompt_template, train_tokenizer),
                add_special_tokens=prompts.adds_special_tokens(prompt_template),
            )["input_ids"]
        )
    for conversation, ids in training_ids(tmp_path, train_tokenizer, prompt_template):
        assert list(saved.apply_chat_template(conversation, return_dict=False)) == ids, conversation
    if prompt_template == prompts.CHAT_TEMPLATE:
        assert saved.chat_template == train_tokenizer.chat_template  # the tokenizer's own, as trained
    else:
        assert "Human:" in saved.chat_template and saved.chat_template != train_tokenizer.chat_template


@pytest.mark.parametrize(
    "arch,prompt_template", [("opt", prompts.UPSTREAM), ("llama", prompts.CHAT_TEMPLATE)]
)
def test_generation_config_stops_at_every_end_of_turn(tiny_models, tmp_path, arch, prompt_template):
    out, tokenizer = saved_model(tiny_models, tmp_path, arch, prompt_template)
    config = GenerationConfig.from_pretrained(out)
    expected = {tokenizer.eos_token_id}
    if prompt_template == prompts.CHAT_TEMPLATE:
        expected.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    assert set(config.eos_token_id) == expected
    # Plain generate() without a tokenizer still works (stop strings in the file would make it raise).
    model = AutoModelForCausalLM.from_pretrained(out)
    model.generate(torch.tensor([[3, 4, 5]]), max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize(
    "arch,prompt_template", [("opt", prompts.UPSTREAM), ("llama", prompts.CHAT_TEMPLATE)]
)
def test_transformers_pipeline_answers_like_the_chatbot(tiny_models, tmp_path, arch, prompt_template):
    out, _ = saved_model(tiny_models, tmp_path, arch, prompt_template)
    generator = pipeline("text-generation", model=str(out), device="cpu")
    model, tokenizer = loading.load_model(str(out))
    for messages in CONVERSATIONS[1:3]:
        result = generator(messages, max_new_tokens=12, do_sample=False)
        answer = result[0]["generated_text"][-1]["content"]
        # A server applies the format's stop strings (upstream: the next " Human:" turn) from the request.
        answer = generation.cut_at_markers(answer, prompts.stop_markers(prompt_template)).strip()
        session = ChatSession(
            model, tokenizer, prompt_template, generation.GenerationSettings(max_new_tokens=12)
        )
        session.system = messages[0]["content"]
        session.history = [m for m in messages[1:-1]]
        assert answer == session.reply(messages[-1]["content"]) and answer, answer


def test_lora_adapter_dir_and_fused_model_carry_the_template(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    convert_linear_layer_to_lora(model, "layers.", 4, lora_scaling=1.0)
    with torch.no_grad():
        for module in lora_modules(model):
            module.lora_left_weight.normal_(std=0.5)
    output = SimpleNamespace(
        output_dir=str(tmp_path / "out"), save_lora_adapter=True, save_format="safetensors"
    )
    lora = SimpleNamespace(lora_dim=4, lora_alpha=1.0, lora_dropout=0.0)
    info = run_dir.run_info(prompts.UPSTREAM, {})
    save_final_model(model, tokenizer, output, lora, 0, str(tiny_models["llama"]), info)
    messages = CONVERSATIONS[2]
    expected = chatbot_ids(tmp_path / "out", prompts.UPSTREAM, messages)
    for directory in (tmp_path / "out", tmp_path / "out" / "lora_adapter"):
        saved = AutoTokenizer.from_pretrained(directory)
        assert (
            list(saved.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
            == expected
        )
        assert (directory / chat_export.GENERATION_CONFIG_NAME).is_file()
    # The adapter dir loads with its own tokenizer, so the chatbot renders the trained format from it too.
    assert chatbot_ids(tmp_path / "out" / "lora_adapter", prompts.UPSTREAM, messages) == expected


def test_template_is_derived_from_the_prompt_format(tiny_models):
    """Every role's text comes from prompts.py; the builder renders upstream's chatbot string too."""
    assert chat_export.role_affixes(prompts.UPSTREAM) == {
        "system": (f" {prompts.SYSTEM} ", ""),
        "user": (f" {prompts.HUMAN} ", f" {prompts.ASSISTANT}"),
        "assistant": (" ", ""),
    }
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["opt"])
    tokenizer.chat_template = chat_export.chat_template_for(prompts.UPSTREAM_CHATBOT, tokenizer, False)
    assert chat_export.template_mismatches(tokenizer, prompts.UPSTREAM_CHATBOT, False) == []


def test_unknown_role_is_a_template_error(tiny_models, tmp_path):
    out, _ = saved_model(tiny_models, tmp_path, "gpt2", prompts.UPSTREAM)
    saved = AutoTokenizer.from_pretrained(out)
    with pytest.raises(Exception, match="roles system, user, assistant"):
        saved.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
