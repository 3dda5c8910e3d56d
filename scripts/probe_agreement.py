"""Probe: the image tasks' closing anchor blended between the prior and the classical estimate by their agreement.

    OMP_NUM_THREADS=2 python scripts/probe_agreement.py 10000:denoise:val 10001:denoise:val head-nlin6:denoise:test

For each ``volume:case:split`` (bench_recon's simulation) one posterior sample ``x_p`` at the shipped defaults and
the classical estimate ``x_c`` (NLM for denoise, cubic for superres); the anchor of the closing solve becomes
``w x_p + (1 - w) x_c`` with ``w = exp(-d^2 / (2 (k sigma)^2))``, ``d`` the 1.5-voxel Gaussian-smoothed
``|x_p - x_c|`` and ``sigma`` the noise std: where the prior draws what the input does not show (a brain prior on
skull and scalp), the classical estimate anchors instead. Prints PSNR of the classical method, today's closing
solve and the blend for k = 1, 2, 4 (and the mean weight). Not wired into ``reconstruct`` yet (session 15 note).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from benchlib import recon_config, simulate


def main() -> None:
    from ldp_med.io.loaders import load_volume
    from ldp_med.metrics import psnr
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.reconstruct import SOLVERS, build_problem
    from ldp_med.sampling.closing import closing_solve
    from ldp_med.sampling.posterior import reconstruct as sample
    from ldp_med.tasks import DEFAULT_METHOD

    prior = load_pretrained()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sys.argv[1:]:
            name, case, split = spec.split(":")
            path = Path(tmp) / f"{name}-{case}.nii.gz"
            ref = simulate(name, case, path, split)
            cfg = recon_config(case, "prior")
            problem = build_problem(load_volume(path), case, cfg)
            x0 = sample(prior, problem, cfg.posterior).samples
            classical = SOLVERS[case, DEFAULT_METHOD[case]](problem, cfg, None, False)[0]  # NLM / cubic, as configured
            c, s = cfg.closing, problem.noise_std
            mu = c.image_mu * s
            out = {"classical": psnr(classical, ref), "closing": psnr(closing_solve(problem, x0, c.image_anchor, mu, c.iters)[0], ref)}
            d = gaussian_filter(np.abs(x0[0] - classical), 1.5)
            for k in (1, 2, 4):
                w = np.exp(-(d**2) / (2 * (k * s) ** 2)).astype(np.float32)
                blend = (w * x0 + (1 - w) * classical).astype(np.float32)
                out[f"blend k={k}"] = psnr(closing_solve(problem, blend, c.image_anchor, mu, c.iters)[0], ref)
                out[f"mean w k={k}"] = float(w.mean())
            print(spec, {k: round(v, 2) for k, v in out.items()}, flush=True)


if __name__ == "__main__":
    main()
