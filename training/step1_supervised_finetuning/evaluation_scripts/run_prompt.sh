#!/usr/bin/env bash
# Compare a base model and its step-1 fine-tune on the same prompts, greedy decoding (prompt_eval.py).
#
# Usage: bash run_prompt.sh BASELINE_MODEL FINETUNED_MODEL [extra prompt_eval.py flags, e.g. --language Chinese]
# On a machine with an NVIDIA GPU this uses GPU 0 only (CUDA_VISIBLE_DEVICES=0 unless already set), as upstream.
# PYTHON (env): the interpreter; default the repository's .venv/bin/python if it exists, else python.
set -euo pipefail

if (( $# < 2 )); then
    echo "usage: bash run_prompt.sh BASELINE_MODEL FINETUNED_MODEL [extra prompt_eval.py flags...]" >&2
    exit 2
fi
source "$(dirname "${BASH_SOURCE[0]}")/../training_scripts/common.sh"  # STEP1_DIR, PYTHON...
# A local path is taken from where the script is called; anything else (a hub id) is passed as is.
BASELINE="$1"
FINETUNE="$2"
if [[ -e "$BASELINE" ]]; then BASELINE="$(realpath "$BASELINE")"; fi
if [[ -e "$FINETUNE" ]]; then FINETUNE="$(realpath "$FINETUNE")"; fi
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
    export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
fi
cd "$STEP1_DIR"

"$PYTHON" prompt_eval.py \
    --model_name_or_path_baseline "$BASELINE" \
    --model_name_or_path_finetune "$FINETUNE" \
    "${@:3}"
