"""The per-record rules: plain functions over one conversation (a list of ``{role, content}`` messages).

A ``*_reason`` function returns why a record is dropped (one line for the report) or None to keep it; a
transform returns the new conversation (the same object when nothing changed).
"""

from __future__ import annotations

import functools
import re

from dschat.clean.text import repair_text

ROLES = ("system", "user", "assistant")
MIN_LANGUAGE_PROBABILITY = 0.1
EMAIL, IP_ADDRESS, PHONE = "<EMAIL>", "<IP_ADDRESS>", "<PHONE>"
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HEX = r"[0-9a-fA-F]{1,4}"
# Order matters: emails before IPs (digits in domains), IPs before phones (192.168.100.200 looks like both).
PII_PATTERNS = (
    (EMAIL, re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    (IP_ADDRESS, re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")),
    (
        IP_ADDRESS,
        re.compile(
            rf"(?<![\w:])(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,7}}:(?:{_HEX}(?::{_HEX}){{0,6}})?)(?![\w:])"
        ),
    ),
    (
        PHONE,
        re.compile(
            r"(?<![\w+.])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}[ .-]\d{3,4}(?![\w-])"
        ),
    ),
)


def repair(messages: list[dict]) -> list[dict]:
    """Every message's content repaired (see ``text.repair_text``); the same list when nothing changed."""
    fixed = [repair_text(m["content"]) for m in messages]
    if all(new == m["content"] for new, m in zip(fixed, messages)):
        return messages
    return [{"role": m["role"], "content": new} for m, new in zip(messages, fixed)]


def scrub_pii(messages: list[dict]) -> list[dict]:
    """Emails, IP addresses and phone numbers replaced by placeholders; the same list when none was found."""
    scrubbed = []
    for message in messages:
        content = message["content"]
        for placeholder, pattern in PII_PATTERNS:
            content = pattern.sub(placeholder, content)
        scrubbed.append(content)
    if all(new == m["content"] for new, m in zip(scrubbed, messages)):
        return messages
    return [{"role": m["role"], "content": new} for m, new in zip(messages, scrubbed)]


def malformed_reason(messages: list[dict]) -> str | None:
    """Empty turns, unknown roles, no user or assistant turn, or roles out of order (system first, then
    user/assistant alternating, ending with the assistant)."""
    if not messages:
        return "no turns"
    for n, message in enumerate(messages, 1):
        role = message["role"]
        if role not in ROLES:
            return f"turn {n} has unknown role {role!r}"
        if not message["content"].strip():
            what = {"user": "empty prompt", "assistant": "empty answer"}.get(role, "empty system turn")
            return f"{what} (turn {n})"
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return "no assistant turn"
    if "user" not in roles:
        return "no user turn"
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if body != expected[: len(body)] or body[-1] != "assistant":
        return "roles out of order: " + ", ".join(roles)
    return None


def short_answer_reason(messages: list[dict], min_chars: int) -> str | None:
    """An assistant answer with fewer than ``min_chars`` characters (after stripping)."""
    for n, message in enumerate(messages, 1):
        size = len(message["content"].strip())
        if message["role"] == "assistant" and size < min_chars:
            return f"answer of {size} characters (turn {n}), under --min_answer_chars {min_chars}"
    return None


def language_reason(messages: list[dict], languages: tuple[str, ...]) -> str | None:
    """Why a record is not in ``languages``: py3langid gives them under ``MIN_LANGUAGE_PROBABILITY`` together.

    A probability floor rather than the top label: short English text often scores as an English-based creole
    (Nigerian Pidgin) first and English a close second, and that must not drop it.
    """
    text = "\n".join(m["content"] for m in messages if m["role"] != "system")
    identifier = _language_identifier()
    if identifier.classify(text)[0] in languages:  # the common case, without ranking every language
        return None
    ranked = identifier.rank(text)
    allowed = sum(p for language, p in ranked if language in languages)
    if allowed >= MIN_LANGUAGE_PROBABILITY:
        return None
    return f"detected language {ranked[0][0]!r} (p={ranked[0][1]:.2f}), {'/'.join(languages)} p={allowed:.2f}"


@functools.cache
def _language_identifier():
    """py3langid's bundled model (no download), with probabilities normalised to sum to 1."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
