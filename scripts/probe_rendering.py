"""How much of the VAE's fidelity is the cohort's rendering? Autoencode PSNR of the same anatomy rendered two ways.

    OMP_NUM_THREADS=1 python scripts/probe_rendering.py [--model FOLDER]

The synthetic cohort interpolates the 2 mm template once, linearly, through each subject's deformation: a blur
every training and test subject shares. Rows (whole-volume PSNR, data range = the reference's maximum, and the
same over the template's brain mask): the 2 mm template on the model grid as it is; the same template through the
cohort's deformation (two seeds); shifted by half a voxel (linear / cubic spline); sampled from the 1 mm template
without deformation (``synthetic._load_maps_1mm``'s anti-aliasing at 0.5 / 0.8 mm); and validation subjects
10000-10003 rendered as the cohort does and with ``sharp=True`` (model units, against the noise-free input, as
probe_vae scores).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from benchlib import psnr_model_units, require_validation, subject_in_model_units
from scipy import ndimage

from ldp_med.data import synthetic
from ldp_med.data.cohort import noise_free_units
from ldp_med.io.volume import Volume
from ldp_med.metrics import psnr
from ldp_med.models.autoencode import autoencode_volume
from ldp_med.models.pretrained import load_pretrained

SEEDS = (10000, 10001, 10002, 10003)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    require_validation(SEEDS)
    prior = load_pretrained(args.model, with_unet=False)
    maps = synthetic.tissue_maps()
    t1, brain, aff = maps["t1"], maps["mask"] > 0.5, synthetic.grid_affine()

    def row(name: str, img: np.ndarray) -> None:
        img = np.clip(img, 0, 1).astype(np.float32)
        rec = autoencode_volume(prior, Volume(img, aff, {})).data
        err = float(((rec - img) ** 2)[brain].mean())
        print(f"| {name} | {psnr(rec, img):.2f} | {10 * np.log10(img.max() ** 2 / err):.2f} |", flush=True)

    print("| 2 mm template | PSNR whole (dB) | PSNR brain (dB) |\n|---|---|---|")
    row("as it is", t1)
    for seed in (1, 2):
        row(f"through the cohort's deformation (seed {seed})", synthetic._deform(t1[None].copy(), seed)[0])
    row("shifted half a voxel, linear", ndimage.shift(t1, (0.5,) * 3, order=1))
    row("shifted half a voxel, cubic spline", ndimage.shift(t1, (0.5,) * 3, order=3))
    idx = np.indices(synthetic.GRID).astype(np.float64)
    for sigma in (0.5, 0.8):
        synthetic._SHARP_SIGMA = sigma
        synthetic._load_maps_1mm.cache_clear()
        row(f"sampled from the 1 mm template, anti-aliasing {sigma} mm", synthetic._sample_1mm(idx)[3])
    synthetic._load_maps_1mm.cache_clear()
    synthetic._SHARP_SIGMA = 0.5

    print("\n| subject | contrast | cohort rendering (dB) | sharp rendering (dB) |\n|---|---|---|---|")
    vae = prior.vae.float().eval()
    out = []
    for seed in SEEDS:
        subj, x, free = subject_in_model_units(seed)
        s = synthetic.make_subject(seed, return_clean=True, sharp=True)
        image, _, expected = noise_free_units(s["image"], s["clean"], s["noise_sigma"])
        with torch.no_grad():
            a = psnr_model_units(vae.decode(vae.encode(x)[0]).clamp(0, 1), free)
            xs = torch.from_numpy(image)[None, None]
            b = psnr_model_units(vae.decode(vae.encode(xs)[0]).clamp(0, 1), torch.from_numpy(expected)[None, None])
        out.append((a, b))
        print(f"| {seed} | {subj['contrast']} | {a:.2f} | {b:.2f} |", flush=True)
    a, b = np.mean(out, axis=0)
    print(f"| mean | | {a:.2f} | {b:.2f} |")


if __name__ == "__main__":
    main()
