#!/usr/bin/env bash
# Prepare, on a machine that reaches PyPI, the folder bench/gpu_check.sh installs from on a GPU machine that
# reaches nothing: `make gpu-packages` (or `bash bench/gpu_packages.sh [DIR]`, default .gpu-packages).
#
# The GPU image already holds torch, triton, numpy, pandas, pyarrow, tokenizers, safetensors, accelerate,
# sacrebleu, httpx and the other heavy or compiled packages. This folder adds the rest of dschat's needs at
# the versions this machine's tests pass with (so the GPU run checks the code that was tested), for CPython
# 3.12 on x86-64 Linux: pure-Python wheels, pydantic's compiled core, liger-kernel (GPU kernels in Triton),
# DeepSpeed as its source package (built there, its ops JIT-compiled on first use), and the embedded default
# model's tokenizer, so the benchmark models have a real 49k vocabulary.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu-packages}
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { echo "gpu_packages.sh: $PY not found: run 'make install' first (or set PY)" >&2; exit 1; }

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# dschat's runtime and serving needs that the GPU image lacks or holds at other versions.
SAME_AS_HERE="transformers huggingface-hub peft datasets dill multiprocess fsspec hjson pydantic pydantic-core
annotated-types typing-inspection typing-extensions regex fastapi starlette uvicorn annotated-doc
opentelemetry-api"
pins=()
for name in $SAME_AS_HERE; do pins+=("$name==$(version "$name")"); done
LIGER=${LIGER:-liger-kernel==0.8.5}

rm -rf "$dest.partial" && mkdir -p "$dest.partial"
download() {
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps -d "$dest.partial" "$@"
}
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms+=(--platform "$tag")
done
download --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" "${pins[@]}" "$LIGER"
download --no-binary=:all: --no-build-isolation "deepspeed==$(version deepspeed)"

tokenizer=$("$PY" -c "from dschat.default_model import default_model_dir; print(default_model_dir())")
mkdir -p "$dest.partial/tokenizer"
for f in tokenizer.json tokenizer_config.json chat_template.jinja; do
  [ -f "$tokenizer/$f" ] && cp "$tokenizer/$f" "$dest.partial/tokenizer/"
done

rm -rf "$dest" && mv "$dest.partial" "$dest"  # a half-downloaded folder is never the one a GPU run trusts
echo "prepared $dest: $(ls "$dest" | wc -l) entries, $(du -sh "$dest" | cut -f1); carry it to the GPU machine"
