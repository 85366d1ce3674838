#!/usr/bin/env bash
# dschat's GPU path in one command (bench/gpu_check.py says what it runs, checks and measures).
#   bash bench/gpu_check.sh [--out DIR]          # a GPU machine, .gpu-packages beside this repo's files
#   bash bench/gpu_check.sh --cpu [--out DIR]    # the same steps in fp32 on tiny models, on a CPU
# The GPU machine reaches no package index: `make gpu-packages`, run where PyPI is reachable, fills
# .gpu-packages with what its image lacks; this script installs that into /tmp/dschat-gpu-site (once per
# machine), building DeepSpeed from its source package with every op left to JIT-compile on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then python=${PYTHON:-.venv/bin/python}; else python=${PYTHON:-python3}; fi

if [[ " $* " != *" --cpu "* ]]; then
  packages=${DSCHAT_GPU_PACKAGES:-.gpu-packages}
  [ -d "$packages" ] || {
    echo "gpu_check.sh: no $packages folder: run 'make gpu-packages' where PyPI is reachable and bring it along" >&2
    exit 2
  }
  site=/tmp/dschat-gpu-site
  if [ ! -f "$site/.installed" ]; then
    rm -rf "$site"
    started=$SECONDS
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --target "$site" "$packages"/*.whl
    DS_BUILD_OPS=0 "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
      --no-build-isolation --no-cache-dir --target "$site" "$packages"/deepspeed-*.tar.gz
    touch "$site/.installed"
    echo "[gpu_check] installed $packages into $site in $((SECONDS - started)) s"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export DSCHAT_TOKENIZER="$packages/tokenizer"
  export PATH="$site/bin:$PATH"  # the deepspeed launcher and ds_report
fi
export PYTHONUNBUFFERED=1
exec "$python" bench/gpu_check.py "$@"
