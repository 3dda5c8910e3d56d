#!/usr/bin/env bash
# The GPU recipe (issues 14/15): the CPU chain of the shipped default (scripts/train_default.sh), run on one CUDA GPU.
# Stages (the CPU configs, unchanged, so a GPU-trained model is the CPU recipe's model):
#   vae     configs/vae_pca.yaml                32-channel PCA-shortcut VAE, 13000 steps
#   prior   configs/prior_pca_wide.yaml         whitened latent prior, UNet (32, 48, 48), 6000 steps
#   metric  configs/prior_pca_wide_metric.yaml  the prior fine-tuned with the loss in the VAE's latent units, 2000 steps
# Each stage resumes from $WORK/<stage>/checkpoint when there is one and is skipped when $WORK/<stage>/model exists,
# so a CPU run stopped half-way (train_state/vae_pca) can be finished here: cp -r train_state/vae_pca $WORK/vae.
# PRIOR_CONFIG / METRIC_CONFIG replace the two prior stages' configs (the (16, 32, 32) UNet of session 22:
# configs/prior_pca.yaml and configs/prior_pca_metric.yaml). MAX_MINUTES
# stops the run that long after it started, the running stage's checkpoint saved (run again to continue).
#
#   bash scripts/gpu_wheels.sh            # here, where PyPI is reachable: fills .whl/
#   bash scripts/train_gpu.sh OUT         # on the GPU machine, from the repository root (.whl/ carried along)
#
# On a machine without our dependencies it installs the wheels in .whl/ into /tmp/site; it renders the synthetic
# cohort (cache/cohort) with one process per core when it is not there; caption embeddings come from
# .whl/captions.safetensors when the text encoder is not installed. STEPS_SCALE (default 1) multiplies every
# stage's steps, for a smoke test on a CPU (STEPS_SCALE=0.002). SET (space-separated KEY=VALUE) adds a --set to every
# stage: the knobs for a version that fits issue 14's 9 minutes, not measured yet (the CPU chain at the fp32 rates of
# sessions 21/24, ~4.6 VAE and ~8.5 prior steps/s on an H200, takes about an hour), e.g.
# SET='loop.autocast=bf16 loop.batch_size=16' with a STEPS_SCALE below 1. Writes the final model folder to OUT
# (default runs/gpu/model).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu/model}
WORK=${WORK:-runs/gpu}
PY=${PY:-python3}
SCALE=${STEPS_SCALE:-1}
PRIOR_CONFIG=${PRIOR_CONFIG:-configs/prior_pca_wide.yaml}
METRIC_CONFIG=${METRIC_CONFIG:-configs/prior_pca_wide_metric.yaml}
read -r -a SETS <<< "${SET:-}"
DEADLINE=$("$PY" -c "import time; print(int(time.time() + ${MAX_MINUTES:-1e5} * 60))")
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import monai, nibabel, pydicom, nilearn, pywt" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" - <<'PY'
import os
from concurrent.futures import ProcessPoolExecutor
from ldp_med.data import synthetic
seeds = list(synthetic.seeds("train", 120))
chunks = [seeds[i::os.cpu_count() or 1] for i in range(os.cpu_count() or 1)]
with ProcessPoolExecutor() as pool:   # one renderer per core; the last call writes index.json over them all
    list(pool.map(synthetic.build_cohort, ["cache/cohort"] * len(chunks), chunks, [False] * len(chunks)))
synthetic.build_cohort("cache/cohort", seeds, progress=False)
PY
steps() { "$PY" -c "print(max(2, round($1 * $SCALE)))"; }
# stage NAME KIND CONFIG STEPS [ARGS...]: train one stage into $WORK/NAME unless its model folder is there
stage() {
  local name=$1 kind=$2 config=$3 n=$4; shift 4
  [[ -f "$WORK/$name/model/config.json" ]] && { echo "$name: model there, skipped"; return; }
  mkdir -p "$WORK/$name"
  [[ -f .whl/captions.safetensors && ! -f "$WORK/$name/captions.safetensors" ]] && cp .whl/captions.safetensors "$WORK/$name/"
  local resume=(); [[ -f "$WORK/$name/checkpoint/state.json" ]] && resume=(--resume)
  local t=$(date +%s)
  local limit=(--max-minutes "$("$PY" -c "print(max(0.1, ($DEADLINE - $t) / 60))")")
  "$PY" -m ldp_med train "$kind" --config "$config" --out "$WORK/$name" --device auto --set loop.threads=0 \
    --set loop.steps="$(steps "$n")" "${resume[@]}" "${limit[@]}" "$@" "${SETS[@]/#/--set=}"
  [[ -f "$WORK/$name/model/config.json" ]] || { echo "$name: stopped before its last step; run again to continue"; exit 3; }
  echo "$name: $(( $(date +%s) - t )) s"
}
stage vae vae configs/vae_pca.yaml 13000 --set whole_volume_steps="$(steps 1000)"
stage prior prior "$PRIOR_CONFIG" 6000 --vae "$WORK/vae/model"
stage metric prior "$METRIC_CONFIG" 2000 --vae "$WORK/vae/model" --init "$WORK/prior/model"
rm -rf "$OUT" && mkdir -p "$(dirname "$OUT")" && cp -r "$WORK/metric/model" "$OUT"
echo "model folder: $OUT"
