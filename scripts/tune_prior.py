"""Tune the DDS posterior sampler's settings on synthetic *validation* subjects (never test subjects).

    OMP_NUM_THREADS=1 python scripts/tune_prior.py --seeds 10000 10001 --case kspace-r8 \\
        --grid prior_error=0.02,0.03,0.05 t_start=0.3,0.5 --out docs/tune_prior_r8.md

Each grid point runs `reconstruct_file` (method prior, --samples posterior samples, default
one) on the simulated file of each seed (bench_recon's acquisitions, scripts/benchlib.py) and reports
mean PSNR / SSIM and seconds; with --samples > 1 also the Spearman correlation of the std map with the
absolute error inside the head (bench_recon's definition) and the ratio of the median std to the median
absolute error there (how much of the error the samples' spread shows).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import CASES, emit, head_mask, recon_config, require_validation, simulate, spearman_in_head
from ldp_med.config import PosteriorConfig, apply_overrides
from ldp_med.io.kspace import load_kspace
from ldp_med.metrics import evaluate
from ldp_med.models.pretrained import load_pretrained
from ldp_med.reconstruct import reconstruct_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001])
    ap.add_argument("--case", default="kspace-r8", choices=list(CASES))
    ap.add_argument("--grid", nargs="+", default=["prior_error=0.02,0.03,0.05", "t_start=0.3,0.5"],
                    help="posterior fields and the values to try, FIELD=v1,v2,...")
    ap.add_argument("--samples", type=int, default=1, help="posterior samples (> 1: Spearman of the std map)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    grid = {k: v.split(",") for k, v in (g.split("=", 1) for g in args.grid)}
    prior = load_pretrained(args.model)
    task = CASES[args.case]["task"]
    extra = ["Spearman(std, err)", "median std / median err"] if args.samples > 1 else []
    lines = ["| " + " | ".join([*grid, "PSNR (dB)", "SSIM", "s/volume", *extra]) + " |", "|" + "---|" * (len(grid) + 3 + len(extra))]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for s in args.seeds:
            path = Path(tmp) / f"{s}{'.h5' if task == 'kspace' else '.nii.gz'}"
            ref = simulate(str(s), args.case, path, split="val")
            files.append((path, load_kspace(path).reference if task == "kspace" else ref))
        for values in itertools.product(*grid.values()):
            posterior = apply_overrides(PosteriorConfig(), [f"{k}={v}" for k, v in zip(grid, values)] + [f"samples={args.samples}"])
            cfg = recon_config(args.case, "prior", posterior)
            scores, secs, rho, ratio = [], [], [], []
            for path, ref in files:
                t0 = time.perf_counter()
                rec = reconstruct_file(path, cfg, prior=prior)
                vol, std = rec.volume, rec.std
                secs.append(time.perf_counter() - t0)
                scores.append(evaluate(vol.data, ref))
                if std is not None:
                    rho.append(spearman_in_head(std.data, vol.data, ref))
                    head = head_mask(ref)
                    ratio.append(np.median(std.data[head]) / np.median(np.abs(vol.data - ref)[head]))
            row = f"| {' | '.join(values)} | {np.mean([s['psnr'] for s in scores]):.2f} | " \
                  f"{np.mean([s['ssim'] for s in scores]):.4f} | {np.mean(secs):.1f} |" + (f" {np.mean(rho):.3f} | {np.mean(ratio):.2f} |" if rho else "")
            lines.append(row)
            print(row, flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
