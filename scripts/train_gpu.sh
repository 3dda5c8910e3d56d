#!/usr/bin/env bash
# The GPU recipe (issue 14): a larger version of the CPU chain (configs/gpu/*.yaml: VAE (16, 32, 64) with the
# residual shortcuts, 16 latent channels; a wider prior UNet), CUDA with bf16 autocast, meant to finish within
# 9 minutes on one GPU; writes the model folder to OUT (default runs/gpu/model).
#
#   bash scripts/gpu_wheels.sh            # here, where PyPI is reachable: fills .whl/
#   bash scripts/train_gpu.sh OUT         # on the GPU machine, from the repository root (.whl/ carried along)
#
# On a machine without our dependencies it installs the wheels in .whl/ into /tmp/site; it renders the synthetic
# cohort (cache/cohort) with one process per core when it is not there; caption embeddings come from
# .whl/captions.safetensors when the text encoder is not installed. STEPS_SCALE (default 1) multiplies every
# stage's steps, for a smoke test on a CPU (STEPS_SCALE=0.002).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu/model}
WORK=${WORK:-runs/gpu}
PY=${PY:-python3}
SCALE=${STEPS_SCALE:-1}
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
steps() { "$PY" -c "import sys; print(max(2, round($1 * $SCALE)))"; }
mkdir -p "$WORK/prior"
[[ -f .whl/captions.safetensors && ! -f "$WORK/prior/captions.safetensors" ]] && cp .whl/captions.safetensors "$WORK/prior/"
t0=$(date +%s)
"$PY" -m ldp_med train vae --config configs/gpu/vae.yaml --out "$WORK/vae" --device auto \
  --set loop.steps="$(steps 9000)" --set whole_volume_steps="$(steps 1000)"
"$PY" -m ldp_med train prior --config configs/gpu/prior.yaml --vae "$WORK/vae/model" --out "$WORK/prior" --device auto \
  --set loop.steps="$(steps 6000)"
rm -rf "$OUT" && mkdir -p "$(dirname "$OUT")" && cp -r "$WORK/prior/model" "$OUT"
echo "model folder: $OUT ($(( $(date +%s) - t0 )) s of training)"
