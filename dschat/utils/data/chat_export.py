"""Make a saved model describe its own prompt format: a chat template and end-of-turn ids, derived from prompts.py.

A model trained in upstream's `` Human: ... Assistant: ...`` format would otherwise ship its base tokenizer's
template (SmolLM2: ChatML; OPT: none), so every standard server (``vllm serve``, ``transformers serve``,
``pipeline("text-generation")``) would render prompts the model never saw. The template written here is built by
rendering each role through ``prompts.generation_prompt`` with a placeholder, so prompts.py stays the one owner
of the strings; ``template_mismatches`` checks it token for token against what training and the chatbot build.

Upstream's format has no separate generation prompt: the user turn itself ends with `` Assistant:``, and training
appends EOS once, after the conversation's last answer (``end_of_conversation_token``). The template does the same.
``--prompt_template chat_template`` runs keep the tokenizer's own template, which they were trained with.

Stop strings (`` Human:``) are NOT written into ``generation_config.json``: transformers 5 then refuses every
``model.generate()`` call that does not pass a tokenizer. dschat's chatbot and server add them from prompts.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from transformers import GenerationConfig

from dschat.utils.data import prompts

logger = logging.getLogger(__name__)

GENERATION_CONFIG_NAME = "generation_config.json"
# Stands for a message's content while a role is rendered; cannot occur in real text.
_CONTENT = "\x00content\x00"
# Conversations the template is checked on: system, multi-turn, and a history ending with an answer.
PROBE_CONVERSATIONS = (
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi, how can I help?"},
        {"role": "user", "content": "Write a short poem about a wise frog."},
    ],
    [
        {"role": "user", "content": "How does a telescope work?"},
        {"role": "assistant", "content": "It gathers light with lenses or mirrors."},
    ],
)


def _literal(text: str) -> str:
    """A Jinja string expression printing ``text`` verbatim (JSON string syntax is valid Jinja)."""
    return "{{- " + json.dumps(text) + " -}}" if text else ""


def role_affixes(prompt_template: str) -> dict[str, tuple[str, str]]:
    """The text before and after a message's content, per role, as ``prompts.generation_prompt`` renders it."""
    affixes = {}
    for role in prompts.ROLES:
        text = prompts.generation_prompt([{"role": role, "content": _CONTENT}], prompt_template)
        before, after = text.split(_CONTENT)
        affixes[role] = (before, after)
    return affixes


def special_affixes(tokenizer) -> tuple[str, str]:
    """Text of the special tokens the tokenizer adds around a text (OPT's and Llama's BOS), which a chat template
    must write itself: ``apply_chat_template`` tokenizes without them."""
    probe = prompts.upstream_prompt("probe")
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
            return decode(full[:start]), decode(full[start + len(plain) :])
    return "", ""


def chat_template_for(prompt_template: str, tokenizer, eos_after_answer: bool = True) -> str | None:
    """A Jinja chat template rendering exactly ``prompt_template``'s text, or None to keep the tokenizer's own.

    ``eos_after_answer``: end a conversation whose last message is an answer with EOS, as training did.
    """
    if prompt_template == prompts.CHAT_TEMPLATE:
        return None
    bos, eos_added = special_affixes(tokenizer)
    eos = tokenizer.eos_token if eos_after_answer and tokenizer.eos_token else ""
    branches = []
    for role, (before, after) in role_affixes(prompt_template).items():
        closing = (
            "{%- if loop.last %}" + _literal(eos) + "{%- endif %}" if role == "assistant" and eos else ""
        )
        branches.append(
            f"{{%- {'if' if not branches else 'elif'} message['role'] == {json.dumps(role)} %}}"
            f"{_literal(before)}{{{{- message['content'] -}}}}{_literal(after)}{closing}"
        )
    roles = ", ".join(prompts.ROLES)
    return (
        f"{{#- dschat: the prompt format this model was trained with ({prompt_template}) -#}}"
        f"{_literal(bos)}"
        "{%- for message in messages %}"
        + "".join(branches)
        + "{%- else %}{{- raise_exception('dschat models know the roles "
        + roles
        + ", not ' + message['role']) }}"
        "{%- endif %}{%- endfor %}"
        f"{_literal(eos_added)}"
    )


def end_of_turn_ids(
    tokenizer, prompt_template: str, configured: int | Sequence[int] | None = None
) -> list[int]:
    """Every token id that ends an answer: the tokenizer's EOS, ``configured`` ids and a chat template's end of turn."""
    ids = [tokenizer.eos_token_id]
    ids += list(configured) if isinstance(configured, (list, tuple)) else [configured]
    if prompt_template == prompts.CHAT_TEMPLATE:
        end_of_turn = prompts.chat_template_end_of_turn(tokenizer)
        if end_of_turn is not None:
            ids.append(tokenizer.convert_tokens_to_ids(end_of_turn))
    return list(dict.fromkeys(i for i in ids if i is not None))


def write_generation_config(
    directory: str | os.PathLike, tokenizer, prompt_template: str
) -> GenerationConfig:
    """Update (or create) ``generation_config.json`` so every end-of-turn token stops generation."""
    directory = Path(directory)
    path = directory / GENERATION_CONFIG_NAME
    config = GenerationConfig.from_pretrained(directory) if path.is_file() else GenerationConfig()
    config.eos_token_id = end_of_turn_ids(tokenizer, prompt_template, config.eos_token_id)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id
    config.save_pretrained(directory)
    return config


def template_mismatches(tokenizer, prompt_template: str, eos_after_answer: bool = True) -> list[str]:
    """Probe conversations whose ``apply_chat_template`` ids differ from the chatbot's prompt or the training text."""
    add_specials = prompts.adds_special_tokens(prompt_template)
    problems = []
    for messages in PROBE_CONVERSATIONS:
        if messages[-1]["role"] == "user":
            text = prompts.generation_prompt(messages, prompt_template, tokenizer)
            got = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        else:
            if prompt_template in prompts.PROMPT_TEMPLATES:  # a training format: the text training tokenised
                text = "".join(s.text for s in prompts.render(messages, prompt_template, tokenizer))
            else:
                text = prompts.generation_prompt(messages, prompt_template, tokenizer)
            if prompt_template != prompts.CHAT_TEMPLATE and eos_after_answer:
                text += tokenizer.eos_token
            got = tokenizer.apply_chat_template(messages, return_dict=False)
        want = tokenizer(text, add_special_tokens=add_specials)["input_ids"]
        if list(got) != list(want):
            problems.append(f"{[m['role'] for m in messages]}: template {list(got)} != dschat {want}")
    return problems


def save_chat_format(tokenizer, directory: str | os.PathLike, run_info: dict | None) -> None:
    """Save the tokenizer with the trained prompt format as its chat template, and the end-of-turn ids.

    The tokenizer object is left as it was. Without run info (a save that is not a training run's) the tokenizer
    and generation config are saved as they are.
    """
    if run_info is None:
        tokenizer.save_pretrained(directory)
        return
    prompt_template = run_info.get("prompt_template", prompts.UPSTREAM)
    eos_after_answer = bool(run_info.get("eos_token_appended", prompt_template == prompts.UPSTREAM))
    template = chat_template_for(prompt_template, tokenizer, eos_after_answer)
    original = tokenizer.chat_template
    if template is not None:
        tokenizer.chat_template = template
    try:
        if tokenizer.chat_template is not None:
            for problem in template_mismatches(tokenizer, prompt_template, eos_after_answer):
                logger.warning("chat template does not reproduce the training format: %s", problem)
        tokenizer.save_pretrained(directory)
    finally:
        tokenizer.chat_template = original
    write_generation_config(directory, tokenizer, prompt_template)
    logger.info("saved chat format prompt_template=%s dir=%s", prompt_template, directory)
