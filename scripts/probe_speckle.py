"""Does a prior draw texture the data do not ask for? A diagnostic on *validation* subjects.

    cd scripts && OMP_NUM_THREADS=1 python probe_speckle.py --models default ../runs/prior_pca_floor/model --case superres

Per model and validation volume: the prior's reconstruction (its task defaults, or ``--set``) before the closing solve
(``closing.iters=0``) and after it, scored against the reference (PSNR / SSIM), with the mean |value| in the
background (voxels more than 3 voxels from the reference's anatomy, which is 0 there) and the same after
autoencoding the result through the model's own VAE (``D(E(x))``: whether the VAE keeps the texture or the sampler
put it there); the task's baseline method (cubic, NLM, CS) in the first row as the reference point, autoencoded
through each model's VAE in the order of ``--models``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from benchlib import CASES, emit, recon_config, require_validation, simulate
from scipy import ndimage

from ldp_med.config import apply_overrides
from ldp_med.metrics import evaluate
from ldp_med.models.pretrained import load_pretrained
from ldp_med.reconstruct import reconstruct_file
from ldp_med.tasks import task_setting


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default"], help="model folders ('default': the shipped one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000])
    ap.add_argument("--case", default="superres", choices=list(CASES))
    ap.add_argument("--set", dest="overrides", nargs="*", default=[],
                    help="overrides of the prior's ReconstructConfig, e.g. posterior.t_start=0.5")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    lines = ["| volume | method | closing | PSNR (dB) | SSIM | background mean abs | after D(E(x)) |", "|" + "---|" * 7]
    priors = {name: load_pretrained(None if name == "default" else name) for name in args.models}
    vaes = {name: prior.vae.float().eval() for name, prior in priors.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            path = Path(tmp) / f"{seed}{'.h5' if CASES[args.case]['task'] == 'kspace' else '.nii.gz'}"
            ref = simulate(str(seed), args.case, path, split="val")
            background = ~ndimage.binary_dilation(ref > 0.05, iterations=3)
            task = CASES[args.case]["task"]
            classical = "cs" if task == "kspace" else task_setting(task, "closing.classical")
            # the baseline through every model's VAE, each prior's result through its own
            rows = [(classical, "", reconstruct_file(path, recon_config(args.case, classical)).volume.data,
                     list(vaes.values()))]
            for name, prior in priors.items():
                for closing, overrides in (("off", ["closing.iters=0"]), ("on", [])):
                    cfg = apply_overrides(recon_config(args.case, "prior"), [*args.overrides, *overrides])
                    rows.append((name, closing, reconstruct_file(path, cfg, prior=prior).volume.data, [vaes[name]]))
            for name, closing, image, vae in rows:  # vae: the VAEs to autoencode through
                score = evaluate(image, ref)
                ae = " / ".join(f"{np.abs(through(v, image)[background]).mean():.4f}" for v in vae)
                lines.append(f"| {seed} | {name} | {closing} | {score['psnr']:.2f} | {score['ssim']:.4f} | "
                             f"{np.abs(image[background]).mean():.4f} | {ae} |")
                print(lines[-1], flush=True)
    emit(lines, args.out)


@torch.no_grad()
def through(vae: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """``D(E(image))``, the image zero-padded to a multiple of 4 voxels per axis (the VAE's 4x4x4 blocks) and cropped back."""
    pad = [(0, -n % 4) for n in image.shape]
    x = torch.from_numpy(np.pad(image.astype(np.float32), pad))[None, None]
    y = vae.decode(vae.encode(x)[0])[0, 0].numpy()
    return y[tuple(slice(0, n) for n in image.shape)]


if __name__ == "__main__":
    main()
