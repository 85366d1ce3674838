"""The one owner of the prompt format: upstream's ' Human: ... Assistant: ...' text and chat templates.

A conversation is a list of ``{"role": ..., "content": ...}`` messages (roles ``system``, ``user``,
``assistant``). Rendering returns segments so later stages can tell prompt text from answer text.
"""

from __future__ import annotations

from dataclasses import dataclass

from dschat.errors import DschatError

UPSTREAM = "upstream"
CHAT_TEMPLATE = "chat_template"
PROMPT_TEMPLATES = (UPSTREAM, CHAT_TEMPLATE)

HUMAN = "Human:"
ASSISTANT = "Assistant:"
SYSTEM = "System:"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; ``is_answer`` marks assistant text (what answer-only loss trains)."""

    text: str
    is_answer: bool


def upstream_prompt(question: str) -> str:
    """Upstream's prompt text: `` Human: <q> Assistant:`` (no trailing space)."""
    return f" {HUMAN} {question} {ASSISTANT}"


def upstream_answer(answer: str) -> str:
    """Upstream's answer text: a leading space, so prompt + answer reads ``... Assistant: <a>``."""
    return f" {answer}"


def upstream_prompt_and_answer(question: str, answer: str) -> str:
    """Upstream's single-turn training text: `` Human: <q> Assistant: <a>``."""
    return upstream_prompt(question) + upstream_answer(answer)


def render_upstream(messages: list[dict]) -> list[Segment]:
    """Render a (multi-turn) conversation in upstream's format, one segment per message."""
    segments = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            segments.append(Segment(f" {SYSTEM} {content}", False))
        elif role == "user":
            segments.append(Segment(upstream_prompt(content), False))
        else:
            segments.append(Segment(upstream_answer(content), True))
    return segments


def require_chat_template(tokenizer) -> None:
    """Fail clearly when ``--prompt_template chat_template`` meets a tokenizer without one."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise DschatError(
            f"--prompt_template chat_template: tokenizer {name!r} has no chat template "
            "(no 'chat_template' in its tokenizer_config.json or chat_template.jinja). "
            "Use --prompt_template upstream, or a model whose tokenizer ships a chat template."
        )


def apply_template(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The tokenizer's chat template rendered as text; a conversation the template refuses (its
    ``raise_exception``: roles out of order, an unsupported system turn) is a DschatError with its message."""
    from jinja2.exceptions import TemplateError  # transformers' template engine

    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as err:
        roles = ", ".join(str(m.get("role")) for m in messages)
        raise DschatError(
            f"the tokenizer's chat template rejects a conversation with roles [{roles}]: {err}. Fix: give it the "
            "roles the template accepts (often user and assistant alternating, a system turn only first or not "
            "at all), or use --prompt_template upstream"
        ) from None


def render_chat_template(tokenizer, messages: list[dict]) -> list[Segment]:
    """Render with the tokenizer's chat template, split at message boundaries.

    Each message's segment is the text its addition appends; an assistant segment starts after the
    generation prompt (the assistant header), so the header counts as prompt. Templates that are not
    prefix-stable (earlier text changes when a message is added) come back as one answer segment.
    """
    require_chat_template(tokenizer)
    full = apply_template(tokenizer, messages)
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            header = apply_template(tokenizer, messages[:i], add_generation_prompt=True)
            if header.startswith(done) and header != done:
                segments.append(Segment(header[len(done) :], False))
                done = header
        text = apply_template(tokenizer, messages[: i + 1])
        if not text.startswith(done):
            return [Segment(full, True)]
        segments.append(Segment(text[len(done) :], message["role"] == "assistant"))
        done = text
    if done != full:
        return [Segment(full, True)]
    return [s for s in segments if s.text]


def render(messages: list[dict], prompt_template: str, tokenizer=None) -> list[Segment]:
    """Render a conversation with the chosen template (``upstream`` or ``chat_template``)."""
    if prompt_template == CHAT_TEMPLATE:
        return render_chat_template(tokenizer, messages)
    return render_upstream(messages)


def chat_prompt_upstream(history: list[dict]) -> str:
    """Prompt for generation in upstream's training format: the history, ending with `` Assistant:``."""
    return "".join(segment.text for segment in render_upstream(history))


_TURN_MARKERS = (("user", HUMAN), ("assistant", ASSISTANT))


def parse_upstream_dialogue(text: str) -> list[dict]:
    """Split upstream-format text (`` Human: ... Assistant: ...``, hh-rlhf's ``\\n\\nHuman:`` too) into messages.

    Text before the first marker becomes a system message. Used to render upstream-format datasets with a
    chat template and to find answer spans for answer-only loss.
    """
    messages: list[dict] = []
    pos, role, turn_start = 0, None, 0
    while True:
        hits = [(text.find(marker, pos), r, marker) for r, marker in _TURN_MARKERS]
        hits = [h for h in hits if h[0] >= 0]
        end = min(hits)[0] if hits else len(text)
        content = text[pos:end].strip()
        if role is None:
            content = content.removeprefix(SYSTEM).strip()  # render_upstream's " System: ..." prefix
            if content:
                messages.append({"role": "system", "content": content})
        elif messages and messages[-1]["role"] == role:
            # The same marker twice in a row is text of one turn (a question quoting "Human:"): keep it whole.
            messages[-1]["content"] = text[turn_start:end].strip()
        else:
            messages.append({"role": role, "content": content})
            turn_start = pos
        if not hits:
            return messages
        _, role, marker = min(hits)
        pos = end + len(marker)


def answer_spans_upstream(text: str) -> list[tuple[int, int]]:
    """Character spans of the answers in upstream-format text: after each ``Assistant:`` up to the next ``Human:``.

    The answer keeps its leading space (upstream's `` Assistant: <a>``); whitespace before the next turn's marker
    does not count as answer.
    """
    spans, pos = [], 0
    while (start := text.find(ASSISTANT, pos)) >= 0:
        start += len(ASSISTANT)
        next_turn = text.find(HUMAN, start)
        end = len(text) if next_turn < 0 else next_turn
        while next_turn >= 0 and end > start and text[end - 1].isspace():
            end -= 1  # the whitespace before the next "Human:" belongs to that turn's marker
        spans.append((start, end))
        pos = end if next_turn < 0 else next_turn
    return spans


def answer_spans(segments: list[Segment]) -> list[tuple[int, int]]:
    """Character spans of the answer segments within the joined text."""
    spans, pos = [], 0
    for segment in segments:
        if segment.is_answer:
            spans.append((pos, pos + len(segment.text)))
        pos += len(segment.text)
    return spans


# --- Inference: generation prompts in the format a model was trained with -------------------------------------

# Upstream chatbot.py's own string (spec 10.1), differing from the training format; kept by choice, not default.
UPSTREAM_CHATBOT = "upstream_chatbot"
INFERENCE_PROMPT_TEMPLATES = (UPSTREAM, UPSTREAM_CHATBOT, CHAT_TEMPLATE)


def adds_special_tokens(prompt_template: str) -> bool:
    """Whether to let the tokenizer add BOS etc.: upstream text does (as in training), a chat template writes its own."""
    return prompt_template != CHAT_TEMPLATE


def stop_markers(prompt_template: str) -> tuple[str, ...]:
    """Text that ends an answer: upstream's formats have no end-of-turn token, a model goes on with ``Human:``."""
    return () if prompt_template == CHAT_TEMPLATE else (HUMAN,)


def upstream_eval_prompt(question: str) -> str:
    """Upstream prompt_eval.py's prompt: ``Human: <q> Assistant:`` (no leading, no trailing space)."""
    return upstream_prompt(question).lstrip()


def chat_prompt_upstream_chatbot(history: list[dict]) -> str:
    """Upstream chatbot.py's prompt: `` Human: <q>\\n Assistant: `` per turn, each answer followed by a blank line."""
    parts = []
    for message in history:
        role, content = message["role"], message["content"]
        if role == "system":
            parts.append(f" {SYSTEM} {content}\n\n")
        elif role == "user":
            parts.append(f" {HUMAN} {content}\n {ASSISTANT} ")
        else:
            parts.append(f"{content}\n\n")
    return "".join(parts)


def chat_prompt_chat_template(tokenizer, history: list[dict]) -> str:
    """The tokenizer's chat template with the generation prompt (the assistant header) appended."""
    require_chat_template(tokenizer)
    return apply_template(tokenizer, history, add_generation_prompt=True)


def generation_prompt(history: list[dict], prompt_template: str, tokenizer=None) -> str:
    """The text a model continues with its answer to the last user message of ``history``."""
    if prompt_template == CHAT_TEMPLATE:
        return chat_prompt_chat_template(tokenizer, history)
    if prompt_template == UPSTREAM_CHATBOT:
        return chat_prompt_upstream_chatbot(history)
    if prompt_template == UPSTREAM:
        return chat_prompt_upstream(history)
    raise DschatError(
        f"unknown prompt template {prompt_template!r}; choose one of {', '.join(INFERENCE_PROMPT_TEMPLATES)}"
    )


def prompt_and_response(
    history: list[dict], reference: str, prompt_template: str, tokenizer=None, eos_token: str = ""
) -> tuple[str, str]:
    """Prompt text and the reference answer's text as the model was trained to produce it (for its perplexity).

    Upstream text: `` <answer>`` plus ``eos_token`` when training appended it; a chat template: everything the
    template adds after the generation prompt (answer and end-of-turn tokens).
    """
    prompt = generation_prompt(history, prompt_template, tokenizer)
    if prompt_template != CHAT_TEMPLATE:
        answer = reference if prompt_template == UPSTREAM_CHATBOT else upstream_answer(reference)
        return prompt, answer + eos_token
    full = apply_template(tokenizer, [*history, {"role": "assistant", "content": reference}])
    if not full.startswith(prompt):
        raise DschatError(
            "the tokenizer's chat template renders the conversation differently with and without the answer "
            "(not prefix-stable), so the answer tokens cannot be told apart; use --prompt_template upstream"
        )
    return prompt, full[len(prompt) :]


def chat_template_end_of_turn(tokenizer) -> str | None:
    """The special token a chat template closes an assistant turn with (``<|im_end|>``, ``<|eot_id|>``), if any."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00answer\x00"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}]
    text = apply_template(tokenizer, messages)
    after = text[text.find(marker) + len(marker) :].lstrip() if marker in text else ""
    specials = sorted(
        set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True
    )
    return next((token for token in specials if token and after.startswith(token)), None)
