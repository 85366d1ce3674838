#!/usr/bin/env bash
# One point of the OPT-1.3b step-1 sweep (see run_step1_sweep.sh): one node, upstream's 4 datasets.
#
# Usage: bash run_single.sh [ZERO_STAGE=2] [OFFLOAD=false] [LORA=false] [OUTPUT_DIR=./output] [extra main.py flags...]
#   OFFLOAD=true adds --offload; LORA=true trains only LoRA (rank 128 on decoder.layers., LR 1e-3, weight
#   decay 0.1), anything else is a full fine-tune (--lora_dim 0, LR 9.65e-6, weight decay 0).
# The command is echoed, and the log goes to OUTPUT_DIR/<name of OUTPUT_DIR>.log as upstream's sweep does.
# LAUNCHER_ARGS (env) adds deepspeed launcher options, e.g. LAUNCHER_ARGS="--master_port 29600".
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../../../common.sh"  # STEP1_DIR, PYTHON, DEEPSPEED, LAUNCHER_OPTS, enter_step1_dir

ZERO_STAGE="${1:-2}"
OFFLOAD="${2:-false}"
LORA="${3:-false}"
OUTPUT="${4:-$STEP1_DIR/output}"
enter_step1_dir

OPTIONAL_FLAGS=()
if [[ "$OFFLOAD" == true ]]; then
    OPTIONAL_FLAGS+=(--offload)
fi
if [[ "$LORA" == true ]]; then
    OPTIONAL_FLAGS+=(--lora_dim 128 --lora_module_name decoder.layers. --only_optimize_lora)
    LEARNING_RATE=1e-3
    WEIGHT_DECAY=0.1
else
    OPTIONAL_FLAGS+=(--lora_dim 0)
    LEARNING_RATE=9.65e-6
    WEIGHT_DECAY=0.
fi

DATASETS=(Dahoas/rm-static Dahoas/full-hh-rlhf Dahoas/synthetic-instruct-gptj-pairwise yitingxie/rlhf-reward-datasets)
CMD=(
    "$DEEPSPEED" "${LAUNCHER_OPTS[@]}" main.py
    --data_path "${DATASETS[@]}"
    --data_split 2,4,4
    --model_name_or_path facebook/opt-1.3b
    --per_device_train_batch_size 8
    --per_device_eval_batch_size 8
    --max_seq_len 512
    --learning_rate "$LEARNING_RATE"
    --weight_decay "$WEIGHT_DECAY"
    --num_train_epochs 16
    --gradient_accumulation_steps 1
    --lr_scheduler_type cosine
    --num_warmup_steps 0
    --seed 1234
    --zero_stage "$ZERO_STAGE"
    "${OPTIONAL_FLAGS[@]}"
    --deepspeed
    --output_dir "$OUTPUT"
    "${@:5}"
)
LOG="$OUTPUT/$(basename "$OUTPUT").log"
echo "${CMD[*]}" | tee "$LOG"
"${CMD[@]}" 2>&1 | tee -a "$LOG"
