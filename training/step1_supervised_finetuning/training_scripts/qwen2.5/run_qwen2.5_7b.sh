#!/usr/bin/env bash
# (dschat) Qwen2.5-7B-Instruct, full fine-tune on one node, ZeRO-3, gradient checkpointing, bf16, chat template.
#
# Usage: bash run_qwen2.5_7b.sh [OUTPUT_DIR=./output_step1_qwen2.5_7b] [ZERO_STAGE=3] [extra main.py flags...]
# Extra flags are appended, so a repeated flag overrides the script's (e.g. --model_name_or_path DIR).
# LAUNCHER_ARGS (env) adds deepspeed launcher options, e.g. LAUNCHER_ARGS="--master_port 29600".
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # STEP1_DIR, PYTHON, DEEPSPEED, LAUNCHER_OPTS, enter_step1_dir

OUTPUT="${1:-$STEP1_DIR/output_step1_qwen2.5_7b}"
ZERO_STAGE="${2:-3}"
enter_step1_dir

DATASETS=(Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets)

"$DEEPSPEED" "${LAUNCHER_OPTS[@]}" main.py \
    --data_path "${DATASETS[@]}" \
    --data_split 2,4,4 \
    --model_name_or_path Qwen/Qwen2.5-7B-Instruct \
    --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 \
    --max_seq_len 512 \
    --learning_rate 1e-5 \
    --weight_decay 0. \
    --num_train_epochs 2 \
    --gradient_accumulation_steps 4 \
    --lr_scheduler_type cosine \
    --num_warmup_steps 50 \
    --seed 1234 \
    --dtype bf16 \
    --prompt_template chat_template \
    --gradient_checkpointing \
    --zero_stage "$ZERO_STAGE" \
    --deepspeed \
    --output_dir "$OUTPUT" \
    "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
