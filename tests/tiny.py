"""Tiny tokenizers and random-initialised models, built offline for tests."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: Write a short poem about a wise frog. Assistant: A frog sat still and thought all day.",
    "Human: How does a telescope work? Assistant: It gathers light with lenses or mirrors.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>/\\|-_=+*&^%$#@~`",
    "System: You are a helpful assistant. User: hello there. Assistant: hi, how can I help?",
    "Instruction: summarise the text. Input: a long text about birds migrating south for winter.",
]

# Chat template for the Llama-style tokenizer: ChatML-like, prefix-stable.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

STYLES = {
    # OPT: BOS and EOS are both </s>, a real <pad> exists (upstream overrides it with eos).
    "opt": dict(bos="</s>", eos="</s>", pad="<pad>", unk="<unk>", prepend_bos=True),
    # Llama: <s> prepended, no pad token (upstream adds [PAD]), a chat template.
    "llama": dict(bos="<s>", eos="</s>", pad=None, unk="<unk>", prepend_bos=True),
    # GPT-2: <|endoftext|> for everything, no BOS prepended, no pad token.
    "gpt2": dict(bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", prepend_bos=False),
}


def make_tokenizer(directory: Path, style: str = "opt", vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a tiny corpus and save it to ``directory``."""
    spec = STYLES[style]
    specials = list(
        dict.fromkeys(t for t in ("<s>", "<pad>", "</s>", "<unk>", spec["bos"], spec["eos"]) if t)
    )
    if style == "llama":
        specials += ["<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    if spec["prepend_bos"]:
        bos_id = backend.token_to_id(spec["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A $B", special_tokens=[(spec["bos"], bos_id)]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        unk_token=spec["unk"],
        **({"pad_token": spec["pad"]} if spec["pad"] else {}),
    )
    if style == "llama":
        tokenizer.chat_template = CHAT_TEMPLATE
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return tokenizer


def make_model(
    directory: Path, arch: str = "opt", style: str | None = None, seed: int = 0, vocab_size: int = 300
) -> Path:
    """Save a tiny random-initialised causal LM of ``arch`` plus its tokenizer to ``directory``.

    The default vocabulary (300) is not a multiple of 8, so loading resizes the embeddings as for Llama;
    pass 304 for a model that needs no resize (like OPT's real vocabulary).
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, OPTConfig

    tokenizer = make_tokenizer(directory, style or arch, vocab_size=vocab_size)
    vocab = len(tokenizer)
    if arch == "opt":
        config = OPTConfig(
            vocab_size=vocab,
            hidden_size=32,
            num_hidden_layers=2,
            ffn_dim=64,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
    else:
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return directory
