#!/usr/bin/env bash
# Run here (PyPI reachable), before scripts/train_gpu.sh on a GPU machine that cannot reach PyPI: downloads the
# wheels such a machine lacks (CPython 3.12, x86-64 Linux; it already has torch, numpy, scipy, scikit-image,
# safetensors, tqdm, click, pyyaml, einops, h5py, matplotlib) into .whl/, and the caption embeddings of the
# synthetic cohort's caption pool into .whl/captions.safetensors (so the GPU needs no text encoder).
# Both travel with the repository (keep .whl/ out of git: echo /.whl/ >> .git/info/exclude). ~25 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  monai==1.6.1 nibabel==5.4.2 pydicom==3.0.2 nilearn==0.14.1 PyWavelets==1.9.0
"$PY" - <<'PY'
from pathlib import Path
from ldp_med.data.synthetic import caption_pool
from ldp_med.training.prior import cached_caption_embeddings
cached_caption_embeddings([c for _, c in caption_pool()], Path(".whl/captions.safetensors"))
PY
ls -la .whl
