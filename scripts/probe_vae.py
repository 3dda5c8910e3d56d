"""What limits the VAE: its encoder (amortisation gap) or its decoder? A diagnostic on *validation* subjects.

    OMP_NUM_THREADS=1 python scripts/probe_vae.py --seeds 10000 10001 10002 --steps 100 --out /tmp/probe.md
    OMP_NUM_THREADS=1 python scripts/probe_vae.py --fit noise-free ...   # the decoder's own ceiling

Per subject (model units: ``PercentileScaleIntensity``'s range, as ``ToModelSpace`` scales): PSNR against the noise-free input
(bench_vae's target) of the autoencoded image ``D(E(x))`` and of ``D(z*)``, where
``z* = argmin_z ||D(z) - x||^2`` is found by Adam from ``E(x)`` (lr 0.05, cosine decay; the decoder
frozen). ``D(z*)`` bounds what a better encoder could give this decoder; what is left to the target is
the decoder's. ``--fit noise-free`` fits ``D(z)`` to the noise-free image instead of the noisy input: the
decoder's ceiling for a VAE trained to output noise-free images (fitting the noisy input pulls such a decoder
away from its target). One decode + backward per step (~3.3 s on one core at 96x112x96).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from benchlib import emit, psnr_model_units as psnr, require_validation, subject_in_model_units

from ldp_med.models.pretrained import load_pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001, 10002])
    ap.add_argument("--steps", type=int, default=100, help="latent optimisation steps")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--fit", choices=("input", "noise-free"), default="input",
                    help="what D(z) is fitted to: the (noisy) input, or the noise-free image")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    vae = load_pretrained(args.model, with_unet=False).vae.float()
    vae.requires_grad_(False)
    marks = sorted({m for m in (10, 30, args.steps) if m <= args.steps})
    lines = ["| subject | contrast | D(E(x)) PSNR (dB) | " + " | ".join(f"D(z*) after {m} steps" for m in marks) + " |",
             "|" + "---|" * (3 + len(marks))]
    rows = []
    for seed in args.seeds:
        subj, x, free = subject_in_model_units(seed)
        target = free if args.fit == "noise-free" else x
        with torch.no_grad():
            z0 = vae.encode(x)[0]
            row = [psnr(vae.decode(z0).clamp(0, 1), free)]
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=args.lr)
        t0 = time.perf_counter()
        for k in range(1, args.steps + 1):
            for g in opt.param_groups:
                g["lr"] = args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * k / args.steps)))
            loss = ((vae.decode(z) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if k in marks:
                with torch.no_grad():
                    row.append(psnr(vae.decode(z).clamp(0, 1), free))
        rows.append(row)
        line = f"| {seed} | {subj['contrast']} | " + " | ".join(f"{v:.2f}" for v in row) + " |"
        lines.append(line)
        print(line, f"({time.perf_counter() - t0:.0f} s)", flush=True)
    mean = np.mean(rows, axis=0)
    lines.append("| mean | | " + " | ".join(f"{v:.2f}" for v in mean) + " |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
