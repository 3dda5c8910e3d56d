"""How precise is the prior where reconstruction uses it? A diagnostic on *validation* subjects.

    OMP_NUM_THREADS=1 python scripts/probe_prior.py --seeds 10000 10001 --t 20 50 100 200 400 --out /tmp/probe_prior.md

Per subject and diffusion step ``t`` (model units, as ``ToModelSpace`` scales): the subject's latent (the VAE
encoder's mean, standardised or whitened as the UNet sees it) is noised to step ``t`` (DDPM forward process, fixed
seed), the UNet (null condition) predicts ``x0``, and the table gives the latent MSE of that prediction (the UNet's
units) and the PSNR of its decoded image against the noise-free input, beside the PSNR of the decoded noisy latent
(``z_t / sqrt(alpha_bar_t)``) and of plain autoencoding. The decoded ``x0`` at small ``t`` is what the last DDIM
steps of posterior sampling hand to data consistency: it bounds what the prior adds. How much one unit of latent
error costs in the image is a property of the latent space (its "diffusability"), the latent MSE one of the UNet.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from benchlib import emit, psnr_model_units as psnr, require_validation, subject_in_model_units

from ldp_med.models.conditioning import label_context, null_class
from ldp_med.models.pretrained import load_pretrained


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001])
    ap.add_argument("--t", type=int, nargs="+", default=[20, 50, 100, 200, 400])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    prior = load_pretrained(args.model)
    alphas = prior_alphas(prior)
    rows: dict[int, list[tuple[float, float, float]]] = {t: [] for t in args.t}
    ae = []
    for seed in args.seeds:
        _, x, ref = subject_in_model_units(seed)
        zn = prior.to_diffusion(prior.vae.encode(x)[0])
        decode = lambda z: prior.vae.decode(prior.from_diffusion(z)).float().clamp(0, 1)  # noqa: E731
        ae.append(psnr(decode(zn), ref))
        gen = torch.Generator().manual_seed(seed)
        for t in args.t:
            a = alphas[t]
            zt = a.sqrt() * zn + (1 - a).sqrt() * torch.randn(zn.shape, generator=gen)
            labels = torch.tensor([null_class(prior)])
            kw = {"class_labels": labels}
            if prior.config.unet.with_conditioning:
                kw["context"] = label_context(prior, labels)
            out = prior.unet(zt, timesteps=torch.tensor([t]), **kw)
            x0 = a.sqrt() * zt - (1 - a).sqrt() * out if prior.config.scheduler.prediction_type == "v_prediction" \
                else (zt - (1 - a).sqrt() * out) / a.sqrt()
            rows[t].append((float(((x0 - zn) ** 2).mean()), psnr(decode(x0), ref), psnr(decode(zt / a.sqrt()), ref)))
    lines = [f"Autoencoded (no noise): {np.mean(ae):.2f} dB against the noise-free input, mean of seeds {args.seeds}.", "",
             "| t | sqrt(1 - alpha_bar) | latent MSE of x0 (diffusion units) | decoded x0 PSNR (dB) | decoded noisy latent PSNR (dB) |",
             "|---|---|---|---|---|"]
    for t in args.t:
        m = np.mean(rows[t], axis=0)
        lines.append(f"| {t} | {float((1 - alphas[t]).sqrt()):.3f} | {m[0]:.4f} | {m[1]:.2f} | {m[2]:.2f} |")
    emit(lines, args.out)


def prior_alphas(prior) -> torch.Tensor:
    from ldp_med.models.builders import build_ddim_scheduler

    return build_ddim_scheduler(prior.config.scheduler, 50).alphas_cumprod


if __name__ == "__main__":
    main()
