#!/usr/bin/env bash
# OPT-1.3b on one GPU with LoRA (rank 128 on decoder.layers., base weights of those layers frozen).
# Data: main.py's default (Dahoas/rm-static); batch 16 (default) x 8 accumulation steps; LR 1e-3 (default).
#
# Usage: bash run_1.3b.sh [OUTPUT_DIR=./output] [ZERO_STAGE=0] [extra main.py flags...]
# Extra flags are appended, so a repeated flag overrides the script's (e.g. --model_name_or_path DIR).
# LAUNCHER_ARGS (env) adds deepspeed launcher options, e.g. LAUNCHER_ARGS="--master_port 29600".
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"  # STEP1_DIR, PYTHON, DEEPSPEED, LAUNCHER_OPTS, enter_step1_dir

OUTPUT="${1:-$STEP1_DIR/output}"
ZERO_STAGE="${2:-0}"
enter_step1_dir

"$DEEPSPEED" --num_gpus 1 "${LAUNCHER_OPTS[@]}" main.py \
    --model_name_or_path facebook/opt-1.3b \
    --gradient_accumulation_steps 8 \
    --lora_dim 128 \
    --zero_stage "$ZERO_STAGE" \
    --enable_tensorboard \
    --tensorboard_path "$OUTPUT" \
    --deepspeed \
    --output_dir "$OUTPUT" \
    "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
