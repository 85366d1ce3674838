#!/usr/bin/env bash
# (dschat) Qwen2.5-7B-Instruct on one node, LoRA only (rank 64, alpha 128 on every layers. projection), bf16.
#
# Usage: bash run_qwen2.5_7b_lora.sh [OUTPUT_DIR=./output_step1_qwen2.5_7b_lora] [ZERO_STAGE=2] [extra main.py flags...]
# Extra flags are appended, so a repeated flag overrides the script's (e.g. --model_name_or_path DIR).
# LAUNCHER_ARGS (env) adds deepspeed launcher options, e.g. LAUNCHER_ARGS="--master_port 29600".
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # STEP1_DIR, PYTHON, DEEPSPEED, LAUNCHER_OPTS, enter_step1_dir

OUTPUT="${1:-$STEP1_DIR/output_step1_qwen2.5_7b_lora}"
ZERO_STAGE="${2:-2}"
enter_step1_dir

DATASETS=(Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets)

"$DEEPSPEED" "${LAUNCHER_OPTS[@]}" main.py \
    --data_path "${DATASETS[@]}" \
    --data_split 2,4,4 \
    --model_name_or_path Qwen/Qwen2.5-7B-Instruct \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 8 \
    --max_seq_len 512 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --num_train_epochs 2 \
    --gradient_accumulation_steps 1 \
    --lr_scheduler_type cosine \
    --num_warmup_steps 50 \
    --seed 1234 \
    --dtype bf16 \
    --prompt_template chat_template \
    --gradient_checkpointing \
    --lora_dim 64 \
    --lora_alpha 128 \
    --lora_dropout 0.05 \
    --lora_module_name "layers." \
    --only_optimize_lora \
    --lora_learning_rate 2e-4 \
    --zero_stage "$ZERO_STAGE" \
    --deepspeed \
    --output_dir "$OUTPUT" \
    "${@:3}" 2>&1 | tee "$OUTPUT/training.log"
