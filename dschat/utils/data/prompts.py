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


def render_chat_template(tokenizer, messages: list[dict]) -> list[Segment]:
    """Render with the tokenizer's chat template, split at message boundaries.

    Each message's segment is the text its addition appends; an assistant segment starts after the
    generation prompt (the assistant header), so the header counts as prompt. Templates that are not
    prefix-stable (earlier text changes when a message is added) come back as one answer segment.
    """
    require_chat_template(tokenizer)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    segments, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            header = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            if header.startswith(done) and header != done:
                segments.append(Segment(header[len(done) :], False))
                done = header
        text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
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
    pos, role = 0, None
    while True:
        hits = [(text.find(marker, pos), r, marker) for r, marker in _TURN_MARKERS]
        hits = [h for h in hits if h[0] >= 0]
        end = min(hits)[0] if hits else len(text)
        content = text[pos:end].strip()
        if role is None:
            if content:
                messages.append({"role": "system", "content": content})
        elif messages and messages[-1]["role"] == role:
            messages[-1]["content"] += f" {content}"
        else:
            messages.append({"role": role, "content": content})
        if not hits:
            return messages
        _, role, marker = min(hits)
        pos = end + len(marker)


def answer_spans_upstream(text: str) -> list[tuple[int, int]]:
    """Character spans of the answers in upstream-format text: after each ``Assistant:`` up to the next ``Human:``."""
    spans, pos = [], 0
    while (start := text.find(ASSISTANT, pos)) >= 0:
        start += len(ASSISTANT)
        end = text.find(HUMAN, start)
        end = len(text) if end < 0 else end
        spans.append((start, end))
        pos = end
    return spans


def answer_spans(segments: list[Segment]) -> list[tuple[int, int]]:
    """Character spans of the answer segments within the joined text."""
    spans, pos = [], 0
    for segment in segments:
        if segment.is_answer:
            spans.append((pos, pos + len(segment.text)))
        pos += len(segment.text)
    return spans
