"""VAE designs at equal CPU time: whole-volume PSNR on validation subjects (issue 14's recipe study).

    OMP_NUM_THREADS=1 python scripts/vae_design.py --minutes 15 --design base16 base8 deep16 wide16 --out docs/vae_design.md
    OMP_NUM_THREADS=1 python scripts/vae_design.py --minutes 12 --design base16 pca16 pca32 --out docs/vae_design_pca.md

Each design trains from scratch with the package's parts (``build_vae``, ``patch_sampler``, ``vae_loss``) on
the training cohort (seeds 0-119, ``cache/cohort``): AdamW 2e-3 with 100 warm-up steps and cosine decay
over the budget, 32^3 patches x 4, the last ``--whole`` fraction of the budget on whole volumes (GroupNorm
statistics). The budget is *process CPU time* (``time.process_time``), so a design is not penalised when
the machine is busy with other work. Scored on validation subjects 10000-10003 (never trained on) in
model units: PSNR against the noise-free input (the Rician mean of the clean image, the issue's target)
and against the noisy input.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace

import numpy as np
import torch

from benchlib import emit, require_validation
from ldp_med.config import DataConfig, ModelConfig, VAEConfig, VAETrainConfig
from ldp_med.data import synthetic
from ldp_med.data.cohort import load_training_images
from ldp_med.models.builders import build_vae
from ldp_med.physics.noise import rician_mean
from ldp_med.space import PercentileScaleIntensity
from ldp_med.training.vae import patch_sampler, vae_loss

BASE = VAEConfig(channels=(8, 16, 32), latent_channels=16, num_res_blocks=1, norm_num_groups=8, shortcut=True,
                 shortcut_map="average")
DESIGNS = {
    "plain4": replace(BASE, latent_channels=4, shortcut=False),  # the architecture shipped until session 14
    "base16": BASE,
    "base8": replace(BASE, latent_channels=8),
    "deep16": replace(BASE, num_res_blocks=(1, 2, 2)),  # capacity at the cheap low-resolution levels
    "wide16": replace(BASE, channels=(8, 32, 64)),
    "pca16": replace(BASE, shortcut_map="pca"),  # the principal components of the blocks as the fixed map
    "pca32": replace(BASE, shortcut_map="pca", latent_channels=32),
}


def validation(seeds: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(noisy, noise-free) model-unit volumes (1, 1, *grid), both scaled by the noisy input's range."""
    out = []
    for s in seeds:
        subj = synthetic.make_subject(s, return_clean=True)
        noisy = torch.from_numpy(subj["image"])[None]
        a_min, a_max = PercentileScaleIntensity().range_of(noisy)
        free = rician_mean(torch.from_numpy(subj["clean"]), subj["noise_sigma"])[None]
        out.append(tuple(((v - a_min) / (a_max - a_min)).clamp(0, 1)[None].float() for v in (noisy, free)))
    return out


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / float(((x - ref) ** 2).mean()))


def run(name: str, vae_cfg: VAEConfig, images: torch.Tensor, val, cpu_seconds: float, whole: float) -> dict:
    torch.manual_seed(0)
    model = build_vae(vae_cfg)
    if hasattr(model, "fit_shortcut"):  # as train_vae does for a new shortcut VAE
        model.fit_shortcut(images)
    cfg = VAETrainConfig(model=replace(ModelConfig(), vae=vae_cfg))
    loss_fn = vae_loss(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4, betas=(0.9, 0.99))
    patches = patch_sampler(images, 32, 4, 0.7)
    volumes = patch_sampler(images, 32, 1, 0.7, whole_from_step=0)
    gen = torch.Generator().manual_seed(0)
    t0, step, wall0 = time.process_time(), 0, time.perf_counter()
    while (frac := (time.process_time() - t0) / cpu_seconds) < 1:
        lr = 2e-3 * min(1.0, (step + 1) / 100) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = (volumes if frac >= 1 - whole else patches)(gen, step)
        loss, _ = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
    model.eval()
    with torch.no_grad():
        scores = [(psnr(model.decode(model.encode(x)[0]).clamp(0, 1), free), psnr(model.decode(model.encode(x)[0]).clamp(0, 1), x))
                  for x, free in val]
        t1 = time.perf_counter()
        model.decode(model.encode(val[0][0])[0])
        seconds = time.perf_counter() - t1
    return {"design": name, "latent_channels": vae_cfg.latent_channels, "channels": list(vae_cfg.channels),
            "num_res_blocks": vae_cfg.num_res_blocks,
            "shortcut": vae_cfg.shortcut_map if vae_cfg.shortcut else False,
            "params": sum(p.numel() for p in model.parameters()), "steps": step,
            "cpu_minutes": cpu_seconds / 60, "wall_minutes": (time.perf_counter() - wall0) / 60,
            "psnr_free": float(np.mean([s[0] for s in scores])), "psnr_noisy": float(np.mean([s[1] for s in scores])),
            "autoencode_s": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--design", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument("--minutes", type=float, default=15.0, help="CPU minutes per design")
    ap.add_argument("--whole", type=float, default=0.25, help="fraction of the budget on whole volumes")
    ap.add_argument("--val", type=int, nargs="+", default=[10000, 10001, 10002, 10003])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.val)
    torch.set_num_threads(1)
    images = load_training_images(DataConfig(synthetic=120, cache_dir="cache/cohort"), ModelConfig()).images
    val = validation(args.val)
    rows = []
    for name in args.design:
        rows.append(run(name, DESIGNS[name], images, val, args.minutes * 60, args.whole))
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"| design | shortcut | latent ch | channels | res blocks | params | steps in {args.minutes:g} CPU-min | "
             "PSNR vs noise-free (dB) | PSNR vs noisy (dB) | encode+decode s (1 thread) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['design']} | {r['shortcut']} | {r['latent_channels']} | {tuple(r['channels'])} | {r['num_res_blocks']} | "
                     f"{r['params'] / 1e3:.0f} k | {r['steps']} | {r['psnr_free']:.2f} | {r['psnr_noisy']:.2f} | {r['autoencode_s']:.2f} |")
    lines += ["", f"Validation subjects {args.val}, model units; last {args.whole:.0%} of each budget on whole volumes."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
