#!/usr/bin/env bash
# (dschat) LoRA fine-tune of the embedded SmolLM2-135M-Instruct on a CPU in a few minutes (2 cores):
# one process, fp32, sequences of up to 256 tokens, batch 4, the tokenizer's chat template, one epoch
# (data/demo: ~90 updates of about a second each; pass --max_steps N for a shorter run).
#
# Usage: bash run_smollm2.sh [OUTPUT_DIR=./output_cpu_smollm2] [ZERO_STAGE=0] [MODEL_DIR] [extra main.py flags...]
#   MODEL_DIR ($3 or env): the converted SmolLM2-135M-Instruct directory; when unset, the script asks
#   `$PYTHON -m dschat.default_model`, which prints it.
#   DATA (env): the training data, default data/demo at the repository root.
# PYTHON (env): the interpreter; default the repository's .venv/bin/python if it exists, else python.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # STEP1_DIR, REPO_ROOT, PYTHON, enter_step1_dir...

OUTPUT="${1:-$STEP1_DIR/output_cpu_smollm2}"
ZERO_STAGE="${2:-0}"
MODEL_DIR="${3:-${MODEL_DIR:-}}"
DATA="${DATA:-$REPO_ROOT/data/demo}"
if [[ -z "$MODEL_DIR" ]]; then
    MODEL_DIR="$("$PYTHON" -m dschat.default_model | tail -n 1)"
fi
# Paths are taken from where the script is called; the run itself happens in the step-1 dir.
MODEL_DIR="$(realpath "$MODEL_DIR")"
DATA="$(realpath "$DATA")"
enter_step1_dir

"$PYTHON" main.py \
    --model_name_or_path "$MODEL_DIR" \
    --data_path "$DATA" \
    --data_split 10,0,0 \
    --prompt_template chat_template \
    --dtype fp32 \
    --per_device_train_batch_size 4 \
    --per_device_eval_batch_size 4 \
    --max_seq_len 256 \
    --learning_rate 5e-4 \
    --num_train_epochs 1 \
    --log_interval 10 \
    --lora_dim 16 \
    --lora_alpha 32 \
    --lora_module_name "layers." \
    --only_optimize_lora \
    --lora_learning_rate 5e-4 \
    --zero_stage "$ZERO_STAGE" \
    --deepspeed \
    --output_dir "$OUTPUT" \
    "${@:4}" 2>&1 | tee "$OUTPUT/training.log"
