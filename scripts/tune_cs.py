"""Tune the CS (L1-wavelet) and TV lambdas on synthetic *validation* subjects (never test data).

    python scripts/tune_cs.py --seeds 10000 --lambdas 0.001 0.002 0.005

Same acquisition as the benchmarks: 8 coils, noise 0.005, Poisson masks with a 12x12 calibration
square at R=4 and R=8. Prints one row per (seed, R, method, lambda) and the best lambda per method
(highest mean PSNR over seeds and accelerations).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from benchlib import require_validation

from ldp_med import baselines
from ldp_med.config import SimulateConfig
from ldp_med.data import synthetic
from ldp_med.io.volume import Volume
from ldp_med.metrics import evaluate
from ldp_med.physics.simulate import simulate_kspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000])
    ap.add_argument("--accels", type=float, nargs="+", default=[4.0, 8.0])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.001, 0.002, 0.005])
    ap.add_argument("--methods", nargs="+", default=["cs"])
    ap.add_argument("--iters", type=int, default=60)
    args = ap.parse_args()
    scores = defaultdict(list)
    require_validation(args.seeds)
    for seed in args.seeds:
        subj = synthetic.make_subject(seed)
        vol = Volume(subj["image"], subj["affine"])
        for accel in args.accels:
            ksp = simulate_kspace(vol, SimulateConfig(accel=accel, coils=8, noise=0.005, calib=12, seed=seed))
            for method in args.methods:
                fn = baselines.cs_l1_wavelet if method == "cs" else baselines.cs_total_variation
                for lam in args.lambdas:
                    t0 = time.perf_counter()
                    img = abs(fn(ksp.kspace, ksp.mask, ksp.sensitivity_maps, lam, args.iters))
                    s = evaluate(img, ksp.reference)
                    scores[(method, lam)].append(s["psnr"])
                    print(f"seed {seed} R {accel:g} {method} lambda {lam:g}: PSNR {s['psnr']:.2f} SSIM {s['ssim']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for method in args.methods:
        best = max((k for k in scores if k[0] == method), key=lambda k: sum(scores[k]) / len(scores[k]))
        print(f"best {method} lambda: {best[1]:g} (mean PSNR {sum(scores[best]) / len(scores[best]):.2f} dB)")


if __name__ == "__main__":
    main()
