"""The README's demo: files, metrics, no overwrite without --force."""

from __future__ import annotations

import json

import pytest

from ldp_med.demo import run_demo
from ldp_med.errors import InputError


def test_demo_writes_images_metrics_and_report(tmp_path):
    out = tmp_path / "demo"
    rows = run_demo(out, accel=8.0, methods=("zero-filled",))
    for name in ("clean.nii.gz", "scan.h5", "zero-filled.nii.gz", "results.json", "report.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["results"]["zero-filled"]["psnr"] == pytest.approx(rows["zero-filled"]["psnr"])
    assert 20 < rows["zero-filled"]["psnr"] < 35  # an undersampled, noisy scan: far from perfect, far from noise
    with pytest.raises(InputError, match="force"):
        run_demo(out, accel=8.0, methods=("zero-filled",))
