"""Where a prior's samples keep noise: per principal component of the latents, the samples' distance from the
validation subjects' background, in the latent cells where no training image has anatomy. Validation subjects only.

    OMP_NUM_THREADS=2 python scripts/probe_background.py --model train_state/prior_joint/model --out /tmp/bg.md

Cells: those where the model folder's ``support`` extra (latent resolution) is exactly 0. Components: the
eigenvectors of the whitening matrix ``latent_mixing`` (a whitened prior only), ordered from the largest variance
of the training latents (component 1, the coarse image) to the smallest (the sub-voxel detail of a shortcut VAE);
scores in whitened units, so the training latents have unit variance on each over all cells. Per component: the
spread (std) of the validation subjects' encoded latents over those cells, and the rms deviation of DDIM samples
(``--contrast``, the default guidance 7, 50 steps) from the validation mean there. Also each decoded sample's std over the
6-voxel border of the model grid, where every training image is background.
"""

from __future__ import annotations

import argparse

import torch
from benchlib import emit, require_validation, subject_in_model_units

from ldp_med.config import DEFAULT_GUIDANCE
from ldp_med.models.pretrained import load_pretrained
from ldp_med.sampling.generate import decode, sample_latents


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001, 10002, 10003])
    ap.add_argument("--contrast", default="T1w")
    ap.add_argument("-n", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    prior = load_pretrained(args.model)
    if not prior.config.latent_mixing or "support" not in prior.extras:
        raise SystemExit("this model has no latent_mixing (whitening) or no support extra")
    _, vectors = torch.linalg.eigh(torch.tensor(prior.config.latent_mixing, dtype=torch.float64))
    background = prior.extras["support"] == 0

    def scores(z):  # VAE latents (B, C, ...) -> whitened component scores in the background cells (B, C, cells)
        return torch.einsum("ck,bc...->bk...", vectors.float(), prior.to_diffusion(z).float())[:, :, background]

    val = torch.cat([scores(prior.vae.encode(subject_in_model_units(s)[1])[0]) for s in args.seeds])
    mean, spread = val.mean(dim=(0, 2)), val.std(dim=(0, 2))
    labels = torch.full((args.n,), prior.config.class_names.index(args.contrast), dtype=torch.long)
    z = sample_latents(prior, labels, 50, DEFAULT_GUIDANCE, torch.Generator().manual_seed(args.seed), False)
    deviation = ((scores(z) - mean[None, :, None]) ** 2).mean(dim=(0, 2)).sqrt()
    images = decode(prior, z)
    inner = torch.zeros(images.shape[1:], dtype=torch.bool)
    inner[6:-6, 6:-6, 6:-6] = True
    border = [float(image[~inner].std()) for image in images]
    lines = [f"{int(background.sum())} of {background.numel()} latent cells without support; validation seeds "
             f"{args.seeds}; {args.n} {args.contrast} samples, seed {args.seed}", "",
             "| component | validation spread (std) | samples' rms deviation from the validation mean |", "|---|---|---|"]
    lines += [f"| {k + 1} | {float(spread[k]):.3f} | {float(deviation[k]):.3f} |" for k in range(len(mean))]
    lines += ["", "Decoded samples' 6-voxel border std: " + ", ".join(f"{b:.4f}" for b in border)]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
