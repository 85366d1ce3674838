"""OpenAI's wire format: request bodies checked field by field (400 naming the field), response and error shapes."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from dschat.utils.data import prompts

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class Limits:
    """Per-request caps: what one request may ask of the server."""

    max_messages: int = 64
    max_characters: int = 32_000
    default_max_tokens: int = 256


class ApiError(Exception):
    """An error response in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


@dataclass
class Sampling:
    """The decoding fields shared by both endpoints."""

    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


@dataclass
class ChatRequest:
    messages: list[dict]
    sampling: Sampling


@dataclass
class CompletionRequest:
    prompt: str
    sampling: Sampling


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(name, f"must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise bad(name, f"must be in {bracket}{low:g}, {high:g}], got {value!r}")
    return float(value)


def _integer(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"must be an integer, got {value!r}")
    return value


def parse_sampling(body: dict) -> Sampling:
    """The decoding fields, checked; ``max_tokens`` is checked against the context later."""
    if not isinstance(body.get("model"), str):
        raise bad("model", "required: the served model's id (GET /v1/models lists it)")
    max_tokens = _integer(body, "max_completion_tokens")
    max_tokens = _integer(body, "max_tokens") if max_tokens is None else max_tokens
    if max_tokens is not None and max_tokens < 1:
        raise bad("max_tokens", f"must be at least 1, got {max_tokens}")
    if body.get("n", 1) != 1:
        raise bad("n", "only n=1 is supported")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad("stop", "must be a non-empty string or a list of them")
    if len(stop) > MAX_STOP_STRINGS:
        raise bad("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("stream", f"must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("stream_options", "must be an object")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 0.0, MAX_TEMPERATURE),  # unset: greedy, as the chatbot
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=tuple(stop),
        seed=_integer(body, "seed"),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def _content(message: Any, index: int) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    where = f"messages[{index}].content"
    content = message.get("content")
    if isinstance(content, list):
        if not all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            raise bad(where, "only text parts ({'type': 'text', 'text': ...}) are supported")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad(where, "must be a string")
    return content


def parse_chat(body: dict, limits: Limits) -> ChatRequest:
    """A chat request: roles system/user/assistant, the last message from the user, within the caps."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages", "required: a non-empty list of {role, content}")
    if len(messages) > limits.max_messages:
        raise bad("messages", f"at most {limits.max_messages} messages per request, got {len(messages)}")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in prompts.ROLES:
            raise bad(f"messages[{i}].role", f"must be one of {', '.join(prompts.ROLES)}")
        parsed.append({"role": message["role"], "content": _content(message, i)})
    if parsed[-1]["role"] != "user":
        raise bad("messages", "the last message must be the user's (the model answers it)")
    characters = sum(len(m["content"]) for m in parsed)
    if characters > limits.max_characters:
        raise bad("messages", f"at most {limits.max_characters} characters of content, got {characters}")
    return ChatRequest(parsed, parse_sampling(body))


def parse_completion(body: dict, limits: Limits) -> CompletionRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("prompt", "required: one non-empty string")
    if len(prompt) > limits.max_characters:
        raise bad("prompt", f"at most {limits.max_characters} characters, got {len(prompt)}")
    return CompletionRequest(prompt, parse_sampling(body))


@dataclass
class Reply:
    """What the response builders need to know about one answer."""

    model: str
    kind: str  # "chat.completion" or "text_completion"
    id: str = field(default_factory=lambda: f"dschat-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict:
        total = prompt_tokens + completion_tokens
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}

    def _envelope(self, object_name: str, choices: list[dict], usage: dict | None) -> dict:
        out = {"id": self.id, "object": object_name, "created": self.created, "model": self.model}
        out["choices"] = choices
        if usage is not None:
            out["usage"] = usage
        return out

    def full(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        return self._envelope(self.kind, [{**choice, "finish_reason": finish_reason}], usage)

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False) -> dict:
        if self.kind == "chat.completion":
            delta = {"role": "assistant", "content": text or ""} if first else {}
            if text and not first:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._envelope("chat.completion.chunk", [choice], None)
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._envelope("text_completion", [choice], None)

    def usage_chunk(self, usage: dict) -> dict:
        name = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        return self._envelope(name, [], usage)
