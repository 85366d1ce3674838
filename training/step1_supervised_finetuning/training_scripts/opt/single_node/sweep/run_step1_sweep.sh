#!/usr/bin/env bash
# Sweep OPT-1.3b step 1 over ZeRO stage {2,3} x offload {true,false} x LoRA {true,false} (8 runs, in turn).
#
# Usage: bash run_step1_sweep.sh [SWEEP_ROOT=step-1 dir] [extra main.py flags for every run...]
# Each run writes SWEEP_ROOT/z<stage>_offload_<offload>_lora_<lora>/ and its log there. A failed run does not
# stop the sweep; the script exits non-zero at the end if any run failed.
# SWEEP_PAUSE_S (env, default 60): seconds to wait between runs, as upstream (lets the devices and the
# rendezvous port settle). Upstream also ran `pkill -9 python` after each run; each run here has exited
# before the next starts, so nothing is killed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SWEEP_ROOT="${1:-$SCRIPT_DIR/../../../..}"
mkdir -p "$SWEEP_ROOT"
SWEEP_ROOT="$(cd "$SWEEP_ROOT" && pwd)"
PAUSE_S="${SWEEP_PAUSE_S:-60}"

FAILED=()
for ZERO_STAGE in 2 3; do
    for OFFLOAD in true false; do
        for LORA in true false; do
            NAME="z${ZERO_STAGE}_offload_${OFFLOAD}_lora_${LORA}"
            if ! bash "$SCRIPT_DIR/run_single.sh" "$ZERO_STAGE" "$OFFLOAD" "$LORA" "$SWEEP_ROOT/$NAME" "${@:2}"; then
                FAILED+=("$NAME")
            fi
            sleep "$PAUSE_S"
        done
    done
done

if (( ${#FAILED[@]} > 0 )); then
    echo "sweep: ${#FAILED[@]} run(s) failed: ${FAILED[*]} (see their logs under $SWEEP_ROOT)" >&2
    exit 1
fi
echo "sweep: all 8 runs finished; logs under $SWEEP_ROOT"
