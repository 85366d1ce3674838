"""Talk to a trained model: a multi-turn chat session (library) and upstream's chatbot CLI on top of it.

    python inference/chatbot.py --path ./output --max_new_tokens 128
    printf 'Hi\\nWhat is 2+2?\\n' | python inference/chatbot.py --path ./output   # one answer line per prompt

Unlike upstream's chatbot (spec 10.1) the prompt is rendered in the format the model was trained with (read
from dschat_run.json), generation is greedy by default, answers stream token by token, and the oldest turns
are dropped when the conversation would overflow the model's context.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from dschat import run_dir
from dschat.errors import DschatError
from dschat.inference import generation, loading
from dschat.utils.data import prompts

logger = logging.getLogger(__name__)

QUIT_COMMANDS = ("quit", "exit")
CLEAR_COMMAND = "clear"
INPUT_PROMPT = "Enter input (type 'quit' to exit, 'clear' to clean memory): "  # upstream's words
ROUND_RULE = "-" * 30


class ChatSession:
    """A conversation with one model: history in messages, rendered in the model's prompt format per turn."""

    def __init__(
        self,
        model,
        tokenizer,
        prompt_template: str = prompts.UPSTREAM,
        settings: generation.GenerationSettings | None = None,
        system: str | None = None,
    ):
        if prompt_template == prompts.CHAT_TEMPLATE:
            prompts.require_chat_template(tokenizer)  # fail before the first prompt, not after it
        self.model, self.tokenizer = model, tokenizer
        self.prompt_template = prompt_template
        self.settings = settings or generation.GenerationSettings()
        self.system = system
        self.stop_ids = generation.stop_token_ids(model, tokenizer, prompt_template)
        self.stop_strings = prompts.stop_markers(prompt_template)
        self.max_context = loading.max_context(model, tokenizer)
        if self.max_context is not None and self.settings.max_new_tokens >= self.max_context:
            raise DschatError(
                f"--max_new_tokens {self.settings.max_new_tokens} leaves no room for the prompt in the model's "
                f"{self.max_context}-token context; use a smaller value"
            )
        self.history: list[dict] = []
        self.trimmed_turns = 0  # oldest turns dropped while building the last prompt
        if prompt_template == prompts.CHAT_TEMPLATE:
            self._encode(
                self._messages("hello")
            )  # a template that refuses --system: say so before the first prompt

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = []

    def _messages(self, user_text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.history, {"role": "user", "content": user_text}]

    def _encode(self, messages: list[dict]) -> list[int]:
        text = prompts.generation_prompt(messages, self.prompt_template, self.tokenizer)
        add_specials = prompts.adds_special_tokens(self.prompt_template)
        return self.tokenizer(text, add_special_tokens=add_specials)["input_ids"]

    def prompt_ids(self, user_text: str) -> list[int]:
        """Token ids of the next prompt; drops the oldest turns (from the history too) until the answer fits."""
        self.trimmed_turns = 0
        ids = self._encode(self._messages(user_text))
        if self.max_context is None:
            return ids
        budget = self.max_context - self.settings.max_new_tokens
        while len(ids) > budget and self.history:
            # A turn is a user message and the answer to it.
            self.history = self.history[2:]
            self.trimmed_turns += 1
            ids = self._encode(self._messages(user_text))
        if len(ids) > budget:
            logger.warning("the prompt alone has %d tokens; keeping its last %d", len(ids), budget)
            ids = ids[-budget:]
        return ids

    def reply(self, user_text: str, write: Callable[[str], None] | None = None) -> str:
        """The model's answer to ``user_text`` (streamed to ``write`` if given), added to the history."""
        ids = self.prompt_ids(user_text)
        answer = generation.generate_streaming(
            self.model,
            self.tokenizer,
            ids,
            self.settings,
            self.stop_ids,
            write or (lambda text: None),
            self.stop_strings,
        )
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]
        return answer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--path", type=str, required=True, help="Directory of the trained model (or PEFT adapter)."
    )
    parser.add_argument("--max_new_tokens", type=int, default=128, help="Most tokens per answer.")
    group = parser.add_argument_group("prompt format (dschat)")
    group.add_argument(
        "--prompt_template",
        choices=prompts.INFERENCE_PROMPT_TEMPLATES,
        default=None,
        help="Default: the format the model was trained with (dschat_run.json; upstream if absent). "
        "upstream_chatbot: upstream chatbot.py's ' Human: ...\\n Assistant: ' string.",
    )
    group.add_argument("--system", type=str, default=None, help="Optional system prompt.")
    generation.add_generation_args(parser)
    return parser.parse_args(argv)


def escape_line(text: str) -> str:
    """One answer on one output line: backslashes and line breaks written as ``\\\\`` and ``\\n``."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _answer(session: ChatSession, text: str, interactive: bool, round_number: int) -> None:
    """One turn: a round header and a streamed answer when interactive, one escaped line otherwise."""
    if interactive:
        print(f"{ROUND_RULE} Round {round_number} {ROUND_RULE}", flush=True)
        session.reply(text, write=lambda chunk: print(chunk, end="", flush=True))
        print(flush=True)
    else:
        print(escape_line(session.reply(text)), flush=True)
    if session.trimmed_turns:
        _notice(
            f"[history trimmed: dropped the {session.trimmed_turns} oldest turn(s) to fit the model's "
            f"{session.max_context}-token context]"
        )


def banner(
    path: str, template: str, settings: generation.GenerationSettings, model, system: str | None
) -> str:
    """What the session runs: model, prompt format, decoding, device (on stderr: stdout carries only answers)."""
    if settings.temperature > 0:
        decoding = (
            f"sampling temperature={settings.temperature} top_p={settings.top_p} top_k={settings.top_k}"
        )
    else:
        decoding = "greedy (--temperature 0)"
    lines = [
        f"dschat chat: model {path} on {model.device} ({str(model.dtype).removeprefix('torch.')})",
        f"  prompt format: {template}; {decoding}; max_new_tokens={settings.max_new_tokens}"
        + (
            f" repetition_penalty={settings.repetition_penalty}" if settings.repetition_penalty != 1.0 else ""
        ),
        f"  system prompt: {system!r}" if system else "  system prompt: none (--system TEXT)",
        f"  type a message; '{CLEAR_COMMAND}' forgets the conversation, '{'/'.join(QUIT_COMMANDS)}' or Ctrl-D ends",
    ]
    return "\n".join(lines)


def tolerate_undecodable_input() -> None:
    """Read stdin with undecodable bytes replaced by U+FFFD: piped bytes in another encoding never stop a chat."""
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="replace")


def decodable(text: str) -> str:
    """``text`` with undecodable bytes as U+FFFD: Python hands them over as lone surrogates (argv, a C-locale
    stdin), which the tokenizer refuses."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        raw = text.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def chat_loop(session: ChatSession, interactive: bool) -> None:
    """Read prompts until quit/exit or end of input; ``clear`` resets the history."""
    round_number = 0
    lines = None if interactive else iter(sys.stdin)
    while True:
        try:
            text = input(INPUT_PROMPT) if interactive else next(lines)
        except (EOFError, StopIteration):
            if interactive:
                print()
            return
        command = decodable(text).strip()
        if command in QUIT_COMMANDS:
            return
        if command == CLEAR_COMMAND:
            session.clear()
            round_number = 0
            _notice("[history cleared]")
            continue
        if command:
            round_number += 1
            _answer(session, command, interactive, round_number)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problems = generation.validate_generation_args(args)
    if problems:
        raise DschatError("; ".join(problems))
    from dschat.utils.log import setup_logging

    setup_logging(logging.WARNING)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    template = run_dir.trained_prompt_template(args.path, args.prompt_template)
    model, tokenizer = loading.load_model(args.path, args.device, args.dtype, args.trust_remote_code)
    transformers.set_seed(args.seed)
    settings = generation.settings_from_args(args)
    system = decodable(args.system) if args.system else args.system
    session = ChatSession(model, tokenizer, template, settings, system)
    _notice(banner(args.path, template, settings, model, system))
    tolerate_undecodable_input()
    chat_loop(session, interactive=sys.stdin.isatty())
