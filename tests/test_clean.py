"""dschat.clean in-process: each kind of defect removed (or repaired) by its rule, clean records untouched."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import tiny

from dschat.clean import CleanConfig, add_clean_args, clean_conversations, rules
from dschat.clean.near_dup import Signer, find_near_duplicates
from dschat.clean.text import repair_text
from dschat.errors import DschatError
from dschat.utils.data import prompts

WORDS = (
    "lighthouse harbour anchor tide compass lantern gull storm keel rope sail mast deck galley chart reef wave "
    "island beacon fog bell cliff pebble shell kelp otter whale dolphin crab oyster barnacle buoy cabin oar "
    "river meadow forest valley mountain desert glacier volcano canyon prairie orchard garden bridge tower "
    "castle market village city road tunnel station engine wheel hammer nail brick window door kettle spoon"
).split()


def chat(question: str, answer: str, system: str | None = None) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def clean_records(count: int, seed: int = 0) -> list[list[dict]]:
    """Distinct, well-formed conversations that share no long phrase (random words)."""
    rng = random.Random(seed)
    return [
        chat(
            f"Question {i}: tell me about the {' '.join(rng.choice(WORDS) for _ in range(6))}?",
            "Answer: " + " ".join(rng.choice(WORDS) for _ in range(30)) + ".",
        )
        for i in range(count)
    ]


def dropped(result, split: str = "train") -> dict[str, int]:
    return {name: stats.removed[split] for name, stats in result.report.rules.items() if stats.removed[split]}


def test_each_defect_is_removed_and_clean_records_are_untouched():
    clean = clean_records(24)
    rng = random.Random(5)
    long_answer = chat("Describe the coast.", "Answer: " + " ".join(rng.choice(WORDS) for _ in range(150)))
    clean.append(long_answer)
    evaluation = clean_records(6, seed=1)
    long_eval_prompt = evaluation[0][0]["content"]  # 12+ words
    base = clean[0]
    defects = [
        # exact duplicates in whitespace, case and unicode (NFKC: full-width letters, compatibility forms)
        chat("  " + base[0]["content"].replace(" ", "   ") + " ", base[1]["content"]),
        chat(base[0]["content"].upper(), base[1]["content"].upper()),
        chat(base[0]["content"].replace("Question", "Ｑｕｅｓｔｉｏｎ"), base[1]["content"]),
        # near-duplicate: two words of a 150-word answer changed
        chat(
            long_answer[0]["content"],
            long_answer[1]["content"].replace("Answer:", "Reply:").replace(" ", " the ", 1),
        ),
        # eval prompt pasted into a longer train prompt; a short eval prompt reused with a new answer
        chat("Here is something: " + long_eval_prompt + " Thanks!", "A fresh answer about kettles."),
        chat("What is the capital of Norway?", "Oslo, of course."),
        # an empty answer, an empty prompt, roles out of order, no assistant turn
        chat("What is a keel?", "   "),
        chat(" ", "An answer with no question."),
        [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Anyone there?"}],
        # a too-short answer
        chat("Say something about tides.", "."),
    ]
    evaluation.append(chat("What is the capital of Norway?", "Oslo."))
    result = clean_conversations(clean + defects, evaluation)

    assert result.train_keep == list(range(len(clean)))
    assert result.train == clean  # byte-identical content, same objects' values
    assert result.train_changed == []
    assert result.eval_keep == list(range(len(evaluation)))
    assert dropped(result) == {
        "exact_dup": 3,
        "near_dup": 1,
        "contaminated": 2,
        "malformed": 4,
        "short_answer": 1,
    }
    why = {ex.why for ex in result.report.rules["exact_dup"].examples}
    assert why == {"same normalised conversation as train record 1"}
    near = result.report.rules["near_dup"].examples[0]
    assert near.where == "train record 29" and "near-duplicate of train record 25" in near.why
    malformed = [ex.why for ex in result.report.rules["malformed"].examples]
    assert malformed == [
        "empty answer (turn 2)",
        "empty prompt (turn 1)",
        "roles out of order: assistant, user",
    ]


def test_clean_data_is_left_as_it_is():
    train, evaluation = clean_records(20), clean_records(5, seed=1)
    result = clean_conversations(train, evaluation)
    assert result.unchanged and result.train == train and result.eval == evaluation
    assert not clean_conversations(train + train[:1], evaluation).unchanged


def test_mojibake_is_repaired_and_the_record_kept():
    broken = chat("What does cafÃ© mean?", "Itâ€™s a coffee\u200b shop.  \r\n\r\n\r\nSee you.")
    result = clean_conversations([broken, *clean_records(3)])
    assert result.train_keep == [0, 1, 2, 3] and result.train_changed == [0]
    assert result.train[0] == chat("What does café mean?", "It’s a coffee shop.\n\nSee you.")
    assert result.report.rules["repair"].changed["train"] == 1
    assert "cafÃ©" in result.report.rules["repair"].examples[0].text


def test_repair_leaves_clean_text_alone():
    for text in (
        "“Curly” quotes, ﬁ ligature, ＣＪＫ　全角。",
        "def f():\n    return 1  # code\n\n    x",
        "a &amp; b",
    ):
        assert repair_text(text) == text


def test_pii_scrub_replaces_emails_ips_and_phones():
    text = (
        "Mail jane.doe+news@example.co.uk or call +1 (555) 123-4567 / 555-123-4567 / +44 20 7946 0958; "
        "server 192.168.10.200, v6 2001:db8::ff00:42:8329."
    )
    [[message]] = [rules.scrub_pii([{"role": "user", "content": text}])]
    assert message["content"] == (
        "Mail <EMAIL> or call <PHONE> / <PHONE> / <PHONE>; server <IP_ADDRESS>, v6 <IP_ADDRESS>."
    )
    keep = "In 2020-2021 we shipped version 3.11.7 at 12:30:45 for $1,234.56 (pi is 3.14159)."
    assert rules.scrub_pii([{"role": "user", "content": keep}])[0]["content"] == keep
    result = clean_conversations(
        [chat("Who?", "Write to bob@example.com.")], config=CleanConfig(scrub_pii=True)
    )
    assert result.train[0][1]["content"] == "Write to <EMAIL>." and result.train_changed == [0]


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([], "no turns"),
        ([{"role": "robot", "content": "x"}], "turn 1 has unknown role 'robot'"),
        (chat("q", "a", system=" "), "empty system turn (turn 1)"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "no user turn"),
        (chat("q", "a") + chat("q2", "a2")[1:], "roles out of order: user, assistant, assistant"),
        (
            chat("q", "a") + [{"role": "user", "content": "more?"}],
            "roles out of order: user, assistant, user",
        ),
        (chat("q", "a", system="s") + chat("q2", "a2"), None),
    ],
)
def test_malformed_reasons(messages, why):
    assert rules.malformed_reason(messages) == why


def test_language_filter_keeps_the_named_languages():
    records = [
        chat("What is the weather like today?", "It is sunny and warm, a lovely day for a walk."),
        chat(
            "Quel temps fait-il aujourd'hui ?", "Il fait beau et chaud, une belle journée pour se promener."
        ),
        chat("Wie ist das Wetter heute?", "Es ist sonnig und warm, ein schöner Tag für einen Spaziergang."),
    ]
    result = clean_conversations(records, config=CleanConfig(languages=("en",)))
    assert result.train_keep == [0] and dropped(result) == {"language": 2}
    assert "'fr'" in result.report.rules["language"].examples[0].why


def test_token_length_rules(tmp_path):
    tokenizer = tiny.make_tokenizer(tmp_path / "tok", "opt")
    long_prompt = chat("the quick brown fox " * 30, "It jumps.")
    records = [chat("Hi?", "Hello there."), chat("Tell me a story.", "Once upon a time " * 20), long_prompt]
    config = CleanConfig(max_seq_len=40)
    result = clean_conversations(records, config=config, tokenizer=tokenizer)
    assert result.train_keep == [0] and dropped(result) == {"truncated": 2}
    keep = CleanConfig(max_seq_len=40, truncated="keep", train_on_prompt=False)
    result = clean_conversations(records, config=keep, tokenizer=tokenizer)
    assert result.train_keep == [0, 1] and dropped(result) == {
        "no_loss_tokens": 1
    }  # the prompt fills 40 tokens
    assert (
        "no loss-bearing answer tokens in the first 40"
        in result.report.rules["no_loss_tokens"].examples[0].why
    )
    assert (
        clean_conversations([chat("q", "")], config=config, tokenizer=tokenizer).train_keep == []
    )  # none left


def test_near_duplicate_clusters_keep_their_earliest_record():
    signer = Signer(ngram=5, num_perm=128)
    rng = random.Random(3)
    words = [rng.choice(WORDS) for _ in range(80)]
    variant = list(words)
    variant[40] = "zebra"  # one word changed: ~0.9 Jaccard over 5-grams
    other = [rng.choice(WORDS) for _ in range(80)]
    texts = [other, words, variant, words[:60] + other[:20]]
    signatures = signer.sign([[{"role": "user", "content": " ".join(t)}] for t in texts])
    found = find_near_duplicates(signatures, threshold=0.8)
    assert [(d.index, d.kept) for d in found] == [(2, 1)] and 0.8 <= found[0].jaccard < 1.0
    assert find_near_duplicates(np.repeat(signatures[:1], 3, axis=0), 0.8)[-1].kept == 0


def test_decontaminate_against_benchmark_files(tmp_path):
    (tmp_path / "bench.txt").write_text("How many legs does a spider have in total?\n")
    (tmp_path / "bench.jsonl").write_text(
        '{"question": "Name the largest planet of our solar system.", "answer": "Jupiter"}\n'
    )
    records = clean_records(3) + [
        chat("How many legs does a spider have in total?", "Eight."),
        chat("Quiz: name the largest planet of our solar system!", "Jupiter."),
    ]
    against = (str(tmp_path / "bench.txt"), str(tmp_path / "bench.jsonl"))
    result = clean_conversations(records, config=CleanConfig(decontaminate_against=against))
    assert result.train_keep == [0, 1, 2] and dropped(result) == {"contaminated": 2}
    assert "bench.jsonl line 1" in result.report.rules["contaminated"].examples[1].why
    with pytest.raises(DschatError, match="missing.txt' does not exist"):
        clean_conversations(records, config=CleanConfig(decontaminate_against=("missing.txt",)))


def test_rules_switch_off_and_workers_agree():
    records = clean_records(5) + [clean_records(1)[0], chat("q?", "")]
    off = CleanConfig(exact_dedup=False, near_dedup=False, drop_malformed=False, min_answer_chars=0)
    assert clean_conversations(records, config=off).train_keep == list(range(7))
    one = clean_conversations(records * 300)
    two = clean_conversations(records * 300, config=CleanConfig(num_proc=2))
    assert one.train_keep == two.train_keep == list(range(5))
    assert (
        one.report.to_dict()["rules"]["exact_dup"]["removed"]
        == two.report.to_dict()["rules"]["exact_dup"]["removed"]
    )


def test_config_from_namespace_cache_fields_and_validation():
    parser = argparse.ArgumentParser()
    add_clean_args(parser)
    parser.add_argument("--max_seq_len", type=int, default=512)  # main.py's own flag
    args = parser.parse_args(["--near_dup_threshold", "0.9", "--exact_dedup", "false", "--max_seq_len", "64"])
    config = CleanConfig.from_namespace(args)
    assert (config.near_dup_threshold, config.exact_dedup, config.max_seq_len) == (0.9, False, 64)
    assert config.prompt_template == "upstream"  # not on the namespace: the default
    assert (
        CleanConfig.from_namespace(parser.parse_args([])).cache_fields()
        == CleanConfig(max_seq_len=512).cache_fields()
    )
    assert config.cache_key() != CleanConfig().cache_key()
    assert CleanConfig(num_proc=4).cache_key() == CleanConfig().cache_key()  # speed is not in the key
    assert {"clean_version", "libraries", "near_dup_threshold"} <= set(config.cache_fields())
    with pytest.raises(DschatError, match=r"--near_dup_threshold 1.5: must be in \(0, 1\]; --num_proc 0"):
        CleanConfig(near_dup_threshold=1.5, num_proc=0).validate()


def test_token_counts_equal_the_tokenizers_own_call(tmp_path):
    from dschat.clean.length import TokenLengths

    tokenizer = tiny.make_tokenizer(tmp_path / "tok", "llama")
    conversations = [
        chat("What is the capital of France?", "Paris."),
        chat("Hi", "hello there " * 9, system="Be brief."),
    ]
    for template in ("upstream", "chat_template"):
        lengths = TokenLengths(tokenizer, 16, template, train_on_prompt=False)
        texts = [
            "".join(s.text for s in prompts.render(c, template, tokenizer)) + lengths.eos
            for c in conversations
        ]
        expected = tokenizer(
            texts, add_special_tokens=lengths.add_special_tokens, return_offsets_mapping=True
        )
        got = lengths._encode(texts)
        assert [ids for ids, _ in got] == expected["input_ids"]
        assert [list(map(tuple, offsets)) for _, offsets in got] == [
            list(map(tuple, o)) for o in expected["offset_mapping"]
        ]
        assert [c.tokens for c in lengths.count(conversations)] == [len(ids) for ids in expected["input_ids"]]
