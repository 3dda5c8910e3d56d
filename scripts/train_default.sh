#!/usr/bin/env bash
# Reproduce the shipped default model (ldp_med/weights/default) from the synthetic cohort on a CPU.
#
#   bash scripts/train_default.sh            # VAE, then prior, then copy into the package
#   MAX_MINUTES=60 bash scripts/train_default.sh   # time-boxed piece; run again to continue (--resume)
#
# Measured on the 2-core development machine (1 thread each, docs/model-card.md): cohort of 120
# training subjects ~3 min, VAE 4200 steps ~55 min, latents ~2 min, prior 1200 steps ~27 min.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/default}
LDP=${LDP:-ldp-med}
limit=()
if [[ -n "${MAX_MINUTES:-}" ]]; then limit=(--max-minutes "$MAX_MINUTES"); fi

stage() {  # stage NAME OUTDIR ARGS...: run or resume one training until its model folder exists
  local name=$1 out=$2; shift 2
  [[ -f "$out/model/config.json" ]] && return 0
  local resume=()
  [[ -f "$out/checkpoint/state.json" ]] && resume=(--resume)
  "$LDP" train "$name" "$@" --out "$out" "${resume[@]}" "${limit[@]}"
  [[ -f "$out/model/config.json" ]] || { echo "stopped early: run the script again to continue"; exit 0; }
}

stage vae "$OUT/vae" --config configs/vae_default.yaml
stage prior "$OUT/prior" --config configs/prior_default.yaml --vae "$OUT/vae/model"
rm -rf ldp_med/weights/default
cp -r "$OUT/prior/model" ldp_med/weights/default
echo "shipped: ldp_med/weights/default"
