"""How the VAE's latent channels share the information: principal components and what each costs if lost.

    OMP_NUM_THREADS=2 python scripts/probe_latent.py --model train_state/vae/model --out /tmp/probe_latent.md

The channel covariance of the latents (encoder means) of training subjects ``--fit`` (statistics only, as
prior training computes its normalisation) is decomposed into principal components. The table gives, per
component, its share of the variance and its standard deviation in the per-channel standardised units the
UNet of a ``latent_norm: channel`` prior sees (the DDPM noise at step t has std sqrt(1 - alpha_bar_t): 0.04
at t = 0, 0.18 at t = 20 with the default schedule), and the PSNR (against the noise-free input) of
validation subjects ``--seeds`` decoded from their latents projected onto the first k components, and decoded with
white noise of std ``--noise`` in whitened units (the units of a ``latent_norm: whiten`` prior; 0.18 is the DDPM
noise at t = 20) added to component k alone: what an error of the UNet in that component costs the image, also
as the added squared error relative to component 1's (the weights of ``loss_metric: latent`` follow the variance).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from benchlib import emit, psnr_model_units as psnr, require_validation, subject_in_model_units

from ldp_med.models.pretrained import load_pretrained
from ldp_med.training.prior import latent_channel_stats


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", type=int, nargs="+", default=[0, 1, 2, 3], help="training subjects for the covariance")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001])
    ap.add_argument("--noise", type=float, default=0.18, help="noise std in whitened units")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    if any(s >= 10000 for s in args.fit):
        raise SystemExit("--fit takes training subjects (seeds below 10000)")
    vae = load_pretrained(args.model, with_unet=False).vae
    z = torch.cat([vae.encode(subject_in_model_units(s)[1])[0] for s in args.fit]).double()
    c = z.shape[1]
    mean, cov = latent_channel_stats(z)
    eig, vec = torch.linalg.eigh(cov)
    eig, vec = eig.flip(0), vec.flip(1)
    channel_var = float(torch.diag(cov).mean())
    ks = sorted({k for k in (1, 2, 3, 4, 6, 8, 10, 12, c) if k <= c})
    scores = {k: [] for k in ks}
    noisy, clean = {k: [] for k in range(c)}, []
    for seed in args.seeds:
        _, x, ref = subject_in_model_units(seed)
        zv = vae.encode(x)[0].double()
        coef = torch.einsum("ck,bc...->bk...", vec, zv - mean.view(1, c, 1, 1, 1))
        for k in ks:
            kept = coef.clone()
            kept[:, k:] = 0
            zk = torch.einsum("ck,bk...->bc...", vec, kept) + mean.view(1, c, 1, 1, 1)
            scores[k].append(psnr(vae.decode(zk.float()).float().clamp(0, 1), ref))
        clean.append(10 ** (-psnr(vae.decode(zv.float()).float().clamp(0, 1), ref) / 10))
        gen = torch.Generator().manual_seed(seed)
        for k in range(c):
            n = torch.randn(coef[:, :1].shape, generator=gen, dtype=torch.float64) * args.noise * eig[k].sqrt()
            zk = zv + vec[:, k].view(1, c, 1, 1, 1) * n
            noisy[k].append(10 ** (-psnr(vae.decode(zk.float()).float().clamp(0, 1), ref) / 10))
    lines = [f"Channel covariance of training subjects {args.fit}; PSNR: validation subjects {args.seeds}.", "",
             f"| component k | share of variance | std in standardised units | PSNR keeping components 1..k (dB) | "
             f"PSNR with noise {args.noise} on component k (dB) | its added squared error / component 1's |",
             "|---|---|---|---|---|---|"]
    added = [np.mean(noisy[k]) - np.mean(clean) for k in range(c)]
    for k in range(1, c + 1):
        share = float(eig[k - 1] / eig.sum())
        std = float((eig[k - 1] / channel_var).sqrt())
        cell = f"{np.mean(scores[k]):.2f}" if k in scores else ""
        lines.append(f"| {k} | {share:.4f} | {std:.3f} | {cell} | {-10 * np.log10(np.mean(noisy[k - 1])):.2f} | "
                     f"{added[k - 1] / added[0]:.4f} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
