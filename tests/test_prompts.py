"""The prompt format (dschat/utils/data/prompts.py), pinned to upstream DeepSpeed-Chat's literal strings.

Upstream's strings (spec sections 3.1, 10.1, 10.2) are written out here as upstream writes them, by
concatenation, rather than built from the module's constants: a change to a constant must fail a test.
"""

from __future__ import annotations

import pytest
import tiny

from dschat.errors import DschatError
from dschat.utils.data import prompts

# A system message, two user turns (one with a newline, one in Chinese), answers with punctuation.
CONVERSATIONS = {
    "single turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    "multi-turn": [
        {"role": "user", "content": "Write a poem\nabout a frog."},
        {"role": "assistant", "content": "A frog sat still."},
        {"role": "user", "content": "法国的首都是哪里？"},
        {"role": "assistant", "content": "巴黎。"},
    ],
    "empty user turn": [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "Hello!"},
    ],
}
WITH_SYSTEM = [{"role": "system", "content": "Be brief."}, *CONVERSATIONS["multi-turn"]]


def joined(segments: list[prompts.Segment]) -> str:
    return "".join(segment.text for segment in segments)


def span_texts(text: str, spans: list[tuple[int, int]]) -> list[str]:
    return [text[start:end] for start, end in spans]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict:
    """The tiny Llama-style tokenizer (ChatML-like template, see tiny.CHAT_TEMPLATE) and OPT's (no template)."""
    root = tmp_path_factory.mktemp("prompt-tokenizers")
    return {style: tiny.make_tokenizer(root / style, style) for style in ("llama", "opt")}


@pytest.fixture
def unstable_template_tokenizer(tmp_path):
    """A tokenizer whose template marks the last message, so adding a message changes the earlier text."""
    tokenizer = tiny.make_tokenizer(tmp_path, "llama")
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    return tokenizer


# --- Upstream's training text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question, answer",
    [
        ("What is 2 plus 2?", "It is 4."),
        ("法国的首都是哪里？", "巴黎。"),
        ("line one\nline two", "ok\n\nbye"),
    ],
)
def test_training_text_is_upstreams_concatenation(question, answer):
    # Spec 3.1: the adapters build '" Human: " + prompt + " Assistant: " + chosen'; get_prompt ends with
    # " Assistant:" (no trailing space) and get_chosen starts with a space, so prompt + chosen is the same text.
    assert (
        prompts.upstream_prompt_and_answer(question, answer)
        == " Human: " + question + " Assistant: " + answer
    )
    assert prompts.upstream_prompt(question) == " Human: " + question + " Assistant:"
    assert prompts.upstream_answer(answer) == " " + answer
    assert prompts.upstream_prompt(question) + prompts.upstream_answer(answer) == (
        prompts.upstream_prompt_and_answer(question, answer)
    )


def test_a_rendered_conversation_is_the_training_text_turn_after_turn():
    conversation = CONVERSATIONS["multi-turn"]
    segments = prompts.render_upstream(conversation)
    assert joined(segments) == (
        " Human: Write a poem\nabout a frog. Assistant: A frog sat still. Human: 法国的首都是哪里？ Assistant: 巴黎。"
    )
    assert [s.is_answer for s in segments] == [False, True, False, True]
    assert prompts.render(conversation, prompts.UPSTREAM) == segments
    assert joined(prompts.render_upstream(WITH_SYSTEM)).startswith(" System: Be brief. Human: Write a poem")


# --- Prompts for generation (chat, evaluation) -------------------------------------------------------------


def test_eval_prompt_is_prompt_eval_pys_string():
    # Spec 10.2: upstream's English list, no leading space and no trailing space after "Assistant:".
    question = "Please tell me about Microsoft in a few sentence?"
    assert (
        prompts.upstream_eval_prompt(question)
        == "Human: Please tell me about Microsoft in a few sentence? Assistant:"
    )


def test_generation_prompt_in_the_training_format_is_the_training_text_up_to_the_answer():
    history, reference = CONVERSATIONS["multi-turn"][:3], CONVERSATIONS["multi-turn"][3]["content"]
    full = joined(prompts.render_upstream(CONVERSATIONS["multi-turn"]))
    prompt = prompts.generation_prompt(history, prompts.UPSTREAM)
    assert (
        prompt
        == " Human: Write a poem\nabout a frog. Assistant: A frog sat still. Human: 法国的首都是哪里？ Assistant:"
    )
    assert prompt + prompts.upstream_answer(reference) == full
    assert prompts.prompt_and_response(history, reference, prompts.UPSTREAM, eos_token="</s>") == (
        prompt,
        " 巴黎。</s>",
    )


def test_chatbot_prompt_is_what_upstreams_chat_loop_builds():
    """Spec 10.1: each turn appends ' ' + "Human: " + text + "\\n Assistant: "; after an answer the history is
    the whole output plus "\\n\\n"."""
    turns = [
        ("hi there", "Hello! How can I help?"),
        ("tell me a joke", "Why did the frog..."),
        ("more", "ok"),
    ]
    history_text, messages = "", []
    for question, answer in turns:
        upstream_prompt = history_text + " " + "Human: " + question + "\n Assistant: "
        messages.append({"role": "user", "content": question})
        assert prompts.generation_prompt(messages, prompts.UPSTREAM_CHATBOT) == upstream_prompt
        history_text = upstream_prompt + answer + "\n\n"
        messages.append({"role": "assistant", "content": answer})
    prompt, response = prompts.prompt_and_response(
        messages[:1], "Hello!", prompts.UPSTREAM_CHATBOT, eos_token="</s>"
    )
    assert (prompt, response) == (" Human: hi there\n Assistant: ", "Hello!</s>")


def test_upstream_formats_stop_at_the_next_human_turn_and_chat_templates_at_their_end_token():
    assert prompts.stop_markers(prompts.UPSTREAM) == ("Human:",)
    assert prompts.stop_markers(prompts.UPSTREAM_CHATBOT) == ("Human:",)
    assert prompts.stop_markers(prompts.CHAT_TEMPLATE) == ()
    assert prompts.adds_special_tokens(prompts.UPSTREAM) and prompts.adds_special_tokens(
        prompts.UPSTREAM_CHATBOT
    )
    assert not prompts.adds_special_tokens(prompts.CHAT_TEMPLATE)  # the template writes its own BOS


def test_an_unknown_generation_template_lists_the_choices():
    with pytest.raises(DschatError, match="upstream, upstream_chatbot, chat_template"):
        prompts.generation_prompt(CONVERSATIONS["single turn"][:1], "alpaca")


# --- Parsing upstream-format text back into messages --------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_parse_round_trips_rendered_conversations(name):
    conversation = CONVERSATIONS[name]
    text = joined(prompts.render_upstream(conversation))
    assert prompts.parse_upstream_dialogue(text) == conversation
    assert joined(prompts.render_upstream(prompts.parse_upstream_dialogue(text))) == text


def test_parse_reads_hh_rlhf_turns():
    # Spec 3.1: Dahoas/rm-static's prompt carries the history with "\n\n" markers, chosen starts with a space.
    text = (
        "\n\nHuman: Hi, can you help?\n\nAssistant: Sure.\n\nHuman: What is 2+2?\n\nAssistant:" + " It is 4."
    )
    assert prompts.parse_upstream_dialogue(text) == [
        {"role": "user", "content": "Hi, can you help?"},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
    ]


def test_parse_keeps_text_before_the_first_turn_as_system_text():
    assert prompts.parse_upstream_dialogue("You are a pirate.\n\nHuman: hi\n\nAssistant: Arr.") == [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Arr."},
    ]
    assert prompts.parse_upstream_dialogue("no turn markers at all") == [
        {"role": "system", "content": "no turn markers at all"}
    ]
    assert prompts.parse_upstream_dialogue("") == []


def test_parse_round_trips_a_system_message():
    text = joined(prompts.render_upstream(WITH_SYSTEM))
    assert prompts.parse_upstream_dialogue(text) == WITH_SYSTEM


def test_an_answer_that_contains_human_ends_where_the_spans_end_it():
    """The format cannot tell an answer's "Human:" from a new turn (upstream's chatbot cuts there too); what
    matters is that the parser (chat templates) and the answer spans (answer-only loss) agree."""
    text = " Human: Say it. Assistant: The word Human: is a marker. Human: Thanks. Assistant: Welcome."
    messages = prompts.parse_upstream_dialogue(text)
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [a.strip() for a in span_texts(text, prompts.answer_spans_upstream(text))] == answers
    assert answers == ["The word", "Welcome."]


def test_repeated_markers_give_alternating_roles():
    # Chat templates such as Llama-2's refuse two user messages in a row.
    messages = prompts.parse_upstream_dialogue(" Human: one. Human: two. Assistant: a")
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == "a"


def test_a_question_quoting_the_marker_keeps_its_text():
    messages = prompts.parse_upstream_dialogue(" Human: What does 'Human:' mean? Assistant: A turn marker.")
    assert messages == [
        {"role": "user", "content": "What does 'Human:' mean?"},
        {"role": "assistant", "content": "A turn marker."},
    ]


# --- Answer spans: the characters answer-only loss trains -------------------------------------------------


def test_upstream_answer_spans_cover_exactly_the_answers():
    text = prompts.upstream_prompt_and_answer("q1", "a1") + prompts.upstream_prompt_and_answer("q2", "a two")
    assert span_texts(text, prompts.answer_spans_upstream(text)) == [" a1", " a two"]
    # With the end-of-conversation token appended (as training does), the last answer includes it.
    text += "<|endoftext|>"
    assert span_texts(text, prompts.answer_spans_upstream(text)) == [" a1", " a two<|endoftext|>"]
    assert prompts.answer_spans_upstream(" Human: no answer yet") == []


def test_hh_rlhf_spans_leave_the_blank_line_to_the_next_turn():
    text = "\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant: a2"
    assert span_texts(text, prompts.answer_spans_upstream(text)) == [" a1", " a2"]


@pytest.mark.parametrize(
    "conversation", [*CONVERSATIONS.values(), WITH_SYSTEM], ids=[*CONVERSATIONS, "system"]
)
def test_spans_from_text_equal_spans_from_segments(conversation):
    """Upstream-format datasets find answers in the text, local message files from the segments: same spans."""
    segments = prompts.render_upstream(conversation)
    text = joined(segments)
    assert prompts.answer_spans(segments) == prompts.answer_spans_upstream(text)
    answers = [" " + m["content"] for m in conversation if m["role"] == "assistant"]
    assert span_texts(text, prompts.answer_spans(segments)) == answers


# --- Chat templates ------------------------------------------------------------------------------------------


def test_chat_template_segments_split_prompt_header_and_answer(tokenizers):
    tokenizer = tokenizers["llama"]
    conversation = [{"role": "system", "content": "Be brief."}, *CONVERSATIONS["single turn"]]
    segments = prompts.render_chat_template(tokenizer, conversation)
    assert segments == [
        prompts.Segment("<|im_start|>system\nBe brief.<|im_end|>\n", False),
        prompts.Segment("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n", False),
        prompts.Segment("<|im_start|>assistant\n", False),  # the generation prompt is prompt, not answer
        prompts.Segment("The capital of France is Paris.<|im_end|>\n", True),
    ]
    assert joined(segments) == tokenizer.apply_chat_template(conversation, tokenize=False)
    assert prompts.render(conversation, prompts.CHAT_TEMPLATE, tokenizer) == segments


def test_chat_template_spans_cover_every_answer_and_its_end_token(tokenizers):
    segments = prompts.render_chat_template(tokenizers["llama"], CONVERSATIONS["multi-turn"])
    text = joined(segments)
    assert span_texts(text, prompts.answer_spans(segments)) == [
        "A frog sat still.<|im_end|>\n",
        "巴黎。<|im_end|>\n",
    ]
    assert prompts.chat_template_end_of_turn(tokenizers["llama"]) == "<|im_end|>"


def test_chat_template_prompt_and_response_split_at_the_generation_prompt(tokenizers):
    tokenizer = tokenizers["llama"]
    history = CONVERSATIONS["multi-turn"][:3]
    prompt, response = prompts.prompt_and_response(history, "巴黎。", prompts.CHAT_TEMPLATE, tokenizer)
    assert prompt == prompts.generation_prompt(history, prompts.CHAT_TEMPLATE, tokenizer)
    assert prompt.endswith("<|im_start|>user\n法国的首都是哪里？<|im_end|>\n<|im_start|>assistant\n")
    assert response == "巴黎。<|im_end|>\n"
    assert prompt + response == joined(prompts.render_chat_template(tokenizer, CONVERSATIONS["multi-turn"]))


def test_a_template_that_rewrites_earlier_text_trains_the_whole_text(unstable_template_tokenizer):
    conversation = CONVERSATIONS["single turn"]
    segments = prompts.render_chat_template(unstable_template_tokenizer, conversation)
    assert segments == [
        prompts.Segment(
            "user: What is the capital of France?\n[LAST]assistant: The capital of France is Paris.\n", True
        )
    ]
    with pytest.raises(DschatError, match="not prefix-stable"):
        prompts.prompt_and_response(
            conversation[:1], "Paris.", prompts.CHAT_TEMPLATE, unstable_template_tokenizer
        )


def test_a_tokenizer_without_a_template_is_a_clear_error(tokenizers):
    tokenizer = tokenizers["opt"]
    for call in (
        lambda: prompts.render(CONVERSATIONS["single turn"], prompts.CHAT_TEMPLATE, tokenizer),
        lambda: prompts.generation_prompt(CONVERSATIONS["single turn"][:1], prompts.CHAT_TEMPLATE, tokenizer),
    ):
        with pytest.raises(DschatError, match="has no chat template.*Use --prompt_template upstream"):
            call()
    assert prompts.chat_template_end_of_turn(tokenizer) is None
