"""Foundation benchmark: `reconstruct --method cs` against sigpy's L1WaveletRecon called directly.

Data: the MNI152 2009a T1 template at 2 mm (nilearn), 8 birdcage coils, complex noise 0.005, Poisson
masks with a 12x12 calibration square at R=4 and R=8. Methods: zero-filled, ldp-med cs/tv through the
file path (simulate -> .h5 -> reconstruct_file), and sigpy.mri.app.L1WaveletRecon on the same arrays.

    python scripts/bench_cs.py --out docs/results_cs.md
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import emit
from ldp_med.config import ReconstructConfig, SimulateConfig
from ldp_med.data.template import mni152_template
from ldp_med.io.kspace import load_kspace, save_kspace
from ldp_med.metrics import evaluate
from ldp_med.physics.simulate import simulate_kspace
from ldp_med.reconstruct import reconstruct_file


def sigpy_direct(ksp, lam: float, iters: int) -> np.ndarray:
    import sigpy.mri.app as app

    w = np.broadcast_to(ksp.mask.astype(np.float32), ksp.kspace.shape[1:])
    return np.abs(app.L1WaveletRecon(ksp.kspace, ksp.sensitivity_maps, lam, weights=w, max_iter=iters, show_pbar=False).run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--methods", nargs="+", default=["zero-filled", "cs", "tv"])
    ap.add_argument("--out", default=None, help="Markdown file to write the table to.")
    args = ap.parse_args()
    cfg = ReconstructConfig()
    clean = mni152_template(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for accel in args.accels:
            h5 = Path(tmp) / f"r{accel:g}.h5"
            sim = SimulateConfig(accel=accel, coils=8, noise=0.005, mask="poisson", calib=12, seed=0)
            save_kspace(simulate_kspace(clean, sim), h5)
            ksp = load_kspace(h5)
            for method in args.methods:
                t0 = time.perf_counter()
                vol = reconstruct_file(h5, dataclasses.replace(cfg, method=method)).volume
                rows.append((accel, ksp.attrs["acceleration"], f"ldp-med {method}", evaluate(vol.data, ksp.reference), time.perf_counter() - t0))
                print(rows[-1], flush=True)
            for lam in sorted({0.002, cfg.baseline.cs_lambda}):
                t0 = time.perf_counter()
                img = sigpy_direct(ksp, lam, cfg.baseline.cs_iters)
                rows.append((accel, ksp.attrs["acceleration"], f"sigpy L1WaveletRecon direct (lambda {lam:g})", evaluate(img, ksp.reference), time.perf_counter() - t0))
                print(rows[-1], flush=True)
    lines = ["| R requested | R realised | method | PSNR (dB) | SSIM | NMSE | time (s) |", "|---|---|---|---|---|---|---|"]
    for accel, real, name, s, sec in rows:
        lines.append(f"| {accel:g} | {real:.2f} | {name} | {s['psnr']:.2f} | {s['ssim']:.4f} | {s['nmse']:.5f} | {sec:.1f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
