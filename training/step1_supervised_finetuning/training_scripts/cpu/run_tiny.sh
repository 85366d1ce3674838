#!/usr/bin/env bash
# (dschat) Smoke-test fine-tune of any small local model on a CPU: one process (no launcher), fp32, up to 20
# updates (--max_steps 20) or one epoch, whichever ends first (4 samples an update: small data gives fewer).
#
# Usage: bash run_tiny.sh [OUTPUT_DIR=./output_cpu_tiny] [ZERO_STAGE=0] [MODEL_DIR] [DATA] [extra main.py flags...]
#   MODEL_DIR: a local Hugging Face model directory; DATA: a local .json/.jsonl/.parquet file or a directory
#   of them. Both may instead come from the environment (MODEL_DIR=... DATA=... bash run_tiny.sh).
# PYTHON (env): the interpreter; default the repository's .venv/bin/python if it exists, else python.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # STEP1_DIR, PYTHON, enter_step1_dir...

OUTPUT="${1:-$STEP1_DIR/output_cpu_tiny}"
ZERO_STAGE="${2:-0}"
MODEL_DIR="${3:-${MODEL_DIR:-}}"
DATA="${4:-${DATA:-}}"
if [[ -z "$MODEL_DIR" || -z "$DATA" ]]; then
    echo "usage: bash run_tiny.sh [OUTPUT_DIR] [ZERO_STAGE] MODEL_DIR DATA [extra main.py flags...]" >&2
    echo "       (or set MODEL_DIR and DATA in the environment)" >&2
    exit 2
fi
# Paths are taken from where the script is called; the run itself happens in the step-1 dir.
MODEL_DIR="$(realpath "$MODEL_DIR")"
DATA="$(realpath "$DATA")"
enter_step1_dir

"$PYTHON" main.py \
    --model_name_or_path "$MODEL_DIR" \
    --data_path "$DATA" \
    --data_split 10,0,0 \
    --dtype fp32 \
    --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 \
    --max_seq_len 128 \
    --learning_rate 5e-5 \
    --num_train_epochs 1 \
    --max_steps 20 \
    --log_interval 1 \
    --zero_stage "$ZERO_STAGE" \
    --deepspeed \
    --output_dir "$OUTPUT" \
    "${@:5}" 2>&1 | tee "$OUTPUT/training.log"
