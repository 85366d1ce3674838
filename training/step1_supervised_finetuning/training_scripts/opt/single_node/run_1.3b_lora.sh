#!/usr/bin/env bash
# OPT-1.3b on one node with LoRA only (rank 128 on decoder.layers., everything else frozen), 4 datasets.
#
# Usage: bash run_1.3b_lora.sh [OUTPUT_DIR=./output] [ZERO_STAGE=0] [extra main.py flags...]
# (Upstream fixes the output dir and the ZeRO stage here; dschat makes them the defaults of $1 and $2.)
# Extra flags are appended, so a repeated flag overrides the script's (e.g. --model_name_or_path DIR).
# LAUNCHER_ARGS (env) adds deepspeed launcher options, e.g. LAUNCHER_ARGS="--master_port 29600".
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../../common.sh"  # STEP1_DIR, PYTHON, DEEPSPEED, LAUNCHER_OPTS, enter_step1_dir

OUTPUT="${1:-$STEP1_DIR/output}"
ZERO_STAGE="${2:-0}"
enter_step1_dir

DATASETS=(Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets)

"$DEEPSPEED" "${LAUNCHER_OPTS[@]}" main.py \
    --data_path "${DATASETS[@]}" \
    --data_split 2,4,4 \
    --model_name_or_path facebook/opt-1.3b \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 \
    --max_seq_len 512 \
    --learning_rate 1e-3 \
    --weight_decay 0.1 \
    --num_train_epochs 16 \
    --gradient_accumulation_steps 1 \
    --lr_scheduler_type cosine \
    --num_warmup_steps 0 \
    --seed 1234 \
    --lora_dim 128 \
    --lora_module_name decoder.layers. \
    --only_optimize_lora \
    --zero_stage "$ZERO_STAGE" \
    --deepspeed \
    --output_dir "$OUTPUT" \
    "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
