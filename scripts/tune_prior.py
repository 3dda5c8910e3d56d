"""Tune a method's settings (the prior's sampler and closing solve, or a classical method's) on synthetic *validation* subjects (never test subjects).

    OMP_NUM_THREADS=1 python scripts/tune_prior.py --seeds 10000 10001 --case kspace-r8 \\
        --grid posterior.prior_error=0.02,0.03,0.05 posterior.t_start=0.3,0.5 --out docs/tune_prior_r8.md
    OMP_NUM_THREADS=1 python scripts/tune_prior.py --case kspace-r8 --reference-method cs \\
        --grid closing.iters=20 closing.anchor=0,0.5,1,2
    OMP_NUM_THREADS=1 python scripts/tune_prior.py --case denoise --heads --method nlm \\
        --grid baseline.nlm_h_factor=0.6,0.8,1.0 baseline.nlm_patch_size=3,5

Each grid point (ReconstructConfig fields, dotted) runs `reconstruct_file` (``--method``, default prior with --samples
posterior samples, default one) on the simulated file of each seed (bench_recon's acquisitions,
scripts/benchlib.py; with ``--heads`` also of each seed inside a synthetic skull, ``ldp_med.data.synthetic.synthetic_head``; with
``--crops`` also of that head moved and cut to half its field of view, ``benchlib.volume_of``'s ``crop:<seed>``; with
``--necks`` also of that head with a neck below it, past the model grid, ``neck:<seed>``; ``--noisy``, ``--faint``,
``--coarse``, ``--parts`` likewise; ``--no-brains`` leaves the plain brains out, so only the kinds asked for run)
and reports mean PSNR / SSIM and seconds (``--per-volume``: each volume's too, under the table); ``--reference-method`` adds that method's
mean PSNR / SSIM on the same files (once) for comparison; with --samples > 1 also the Spearman
correlation of the std map with the absolute error inside the head (bench_recon's definition), the ratio
of the median std to the median absolute error there, and the std scale that would give 90% coverage of
``|error| <= 1.645 s std`` in the head (the calibration of ``posterior.std_scale``; pass
``--grid posterior.std_scale=1`` to calibrate against the unscaled map) and the AUSE.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import (CASES, add_volume_kinds, emit, head_mask, recon_config, require_validation, simulate,
                      spearman_in_head, volume_names)
from ldp_med.config import PosteriorConfig, apply_overrides
from ldp_med.io.kspace import load_kspace
from ldp_med.metrics import ause, evaluate, std_scale_for
from ldp_med.models.pretrained import load_pretrained
from ldp_med.reconstruct import reconstruct_file
from ldp_med.tasks import PRIOR_METHODS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001])
    ap.add_argument("--case", default="kspace-r8", choices=list(CASES))
    ap.add_argument("--grid", nargs="+", default=["posterior.prior_error=0.02,0.03,0.05", "posterior.t_start=0.3,0.5"],
                    help="ReconstructConfig fields and the values to try, SECTION.FIELD=v1,v2,...")
    ap.add_argument("--reference-method", default=None, help="also score this method once per file (e.g. cs)")
    ap.add_argument("--samples", type=int, default=1, help="posterior samples (> 1: Spearman of the std map)")
    add_volume_kinds(ap)
    ap.add_argument("--per-volume", action="store_true",
                    help="also print each volume's PSNR / SSIM / seconds under its grid point's row")
    ap.add_argument("--method", default="prior", help="the method whose settings the grid varies (default prior)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    # a bare field name is a posterior field (the syntax of the earlier tables' commands)
    grid = {(k if "." in k else f"posterior.{k}"): v.split(",") for k, v in (g.split("=", 1) for g in args.grid)}
    prior = load_pretrained(args.model) if args.method in PRIOR_METHODS else None  # classical methods need none
    task = CASES[args.case]["task"]
    extra = ["Spearman(std, err)", "median std / median err", "std scale for 90%", "AUSE"] if args.samples > 1 else []
    if args.reference_method:
        extra.append(f"worst volume - {args.reference_method} (dB)")
    lines = ["| " + " | ".join([*grid, "PSNR (dB)", "SSIM", "s/volume", *extra]) + " |", "|" + "---|" * (len(grid) + 3 + len(extra))]
    with tempfile.TemporaryDirectory() as tmp:
        files, names, per = [], [], []
        for s in volume_names(args):
            path = Path(tmp) / f"{s.replace(':', '-')}{'.h5' if task == 'kspace' else '.nii.gz'}"
            ref = simulate(s, args.case, path, split="val")
            files.append((path, load_kspace(path).reference if task == "kspace" else ref))
            names.append(s)
        if args.reference_method:
            ref_cfg = recon_config(args.case, args.reference_method)
            ref_scores, ref_secs = [], []
            for path, ref in files:
                t0 = time.perf_counter()
                ref_scores.append(evaluate(reconstruct_file(path, ref_cfg).volume.data, ref))
                ref_secs.append(time.perf_counter() - t0)
            row = (f"{args.reference_method}: PSNR {np.mean([s['psnr'] for s in ref_scores]):.2f} dB, SSIM "
                   f"{np.mean([s['ssim'] for s in ref_scores]):.4f}, {np.mean(ref_secs):.1f} s/volume")
            print(row, flush=True)
            lines.insert(0, row + "\n")
            if args.per_volume:
                per.append(_per_volume(args.reference_method, names, ref_scores, ref_secs))
        base = recon_config(args.case, args.method, PosteriorConfig(samples=args.samples))
        for values in itertools.product(*grid.values()):
            cfg = apply_overrides(base, [f"{k}={v}" for k, v in zip(grid, values)])
            scores, secs, rho, ratio, scale, sparse = [], [], [], [], [], []
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
                    scale.append(std_scale_for((vol.data - ref)[head], std.data[head]))
                    sparse.append(ause((vol.data - ref)[head], std.data[head]))
            if args.reference_method:  # the worst volume against the reference (the floor is per volume)
                extra_cols = f" {min(s['psnr'] - r['psnr'] for s, r in zip(scores, ref_scores)):+.2f} |"
            else:
                extra_cols = ""
            row = f"| {' | '.join(values)} | {np.mean([s['psnr'] for s in scores]):.2f} | " \
                  f"{np.mean([s['ssim'] for s in scores]):.4f} | {np.mean(secs):.1f} |" + (f" {np.mean(rho):.3f} | {np.mean(ratio):.2f} | {np.mean(scale):.2f} | {np.mean(sparse):.3f} |" if rho else "") + extra_cols
            lines.append(row)
            print(row, flush=True)
            if args.per_volume:
                per.append(_per_volume(" ".join(values), names, scores, secs, scale))
                print(per[-1], flush=True)
    emit(lines + per, args.out)


def _per_volume(label: str, names: list[str], scores: list[dict], secs: list[float], scales=()) -> str:
    """A paragraph of each volume's PSNR / SSIM / seconds (and std scale for 90%, with a std map) under ``label``
    (``--per-volume``)."""
    scales = [f" / scale {c:.2f}" for c in scales] or [""] * len(names)
    return f"\n{label}: " + "; ".join(f"{n} {s['psnr']:.2f} / {s['ssim']:.4f} / {t:.1f} s{c}"
                                       for n, s, t, c in zip(names, scores, secs, scales))


if __name__ == "__main__":
    main()
