"""Two CPU processes under torchrun (gloo): both ranks end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from ldp_med.config import to_dict
from tests.conftest import vae_cfg


def test_torchrun_two_processes_identical_weights(tmp_path, cohort_dir):
    cfg = vae_cfg(cohort_dir, steps=3, checkpoint_every=3)
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "ldp_med", "train", "vae", "--config", str(cfg_path), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    d0 = (out / "digest_rank0.txt").read_text()
    d1 = (out / "digest_rank1.txt").read_text()
    assert d0 == d1 and len(d0) == 64
    assert (out / "model" / "vae.safetensors").is_file()
