"""Probe: the image tasks' closed prior sample blended with the classical estimate by their agreement.

    cd scripts && RELATIVE=0.03,0.04,0.05 OMP_NUM_THREADS=2 python probe_agreement.py 10000:denoise:val head:10000:denoise:val

For each ``volume:case:split`` (bench_recon's simulation; ``head:<seed>`` is a validation subject in a synthetic
skull, ``ldp_med.data.synthetic.synthetic_head``) one posterior sample ``x_p`` at the shipped defaults, its closing solve, and the
classical estimate ``x_c`` (``closing.classical``: noise2self for denoise, selfsim for superres); the closed sample is
blended with ``x_c`` by :func:`ldp_med.sampling.closing.agreement_blend` (what ``reconstruct`` does), with ``BEFORE=1``
the sample is blended first and then closed (the first version). Tolerances: each value of ``RELATIVE`` times the
99th percentile of ``x_c`` (what ``closing.image_agreement`` sets), or without ``RELATIVE`` k = 0.5-3 times the
noise std. Prints PSNR of the classical method, of the closed sample alone and of each blend;
docs/tune_agreement.md holds the tuning runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchlib import recon_config, simulate


def main() -> None:
    from ldp_med.io.loaders import load_volume
    from ldp_med.metrics import psnr
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.reconstruct import build_problem, classical_estimate, settle
    from ldp_med.sampling.closing import agreement_blend, closing_solve
    from ldp_med.sampling.posterior import reconstruct as sample

    prior = load_pretrained()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in sys.argv[1:]:
            name, case, split = spec.rsplit(":", 2)
            path = Path(tmp) / f"{name.replace(':', '-')}-{case}.nii.gz"
            ref = simulate(name, case, path, split)
            cfg = recon_config(case, "prior")
            problem = build_problem(load_volume(path), case, cfg)
            x0 = sample(prior, problem, cfg.posterior).samples
            classical = classical_estimate(problem, cfg)[0]  # the task's classical method, as configured
            c, s = settle(cfg, problem).closing, problem.noise_std
            mu = c.image_mu * s
            closed = closing_solve(problem, x0, c.image_anchor, mu, c.iters)
            out = {"classical": psnr(classical, ref), "closing": psnr(closed[0], ref)}
            relative = os.environ.get("RELATIVE")  # tolerances as fractions of the classical estimate's 99th percentile
            scale = np.percentile(classical, 99) if relative else s
            for k in [float(v) for v in relative.split(",")] if relative else (0.5, 1, 1.5, 2, 3):
                if os.environ.get("BEFORE"):  # session 16's first try: blend the anchor, then close
                    out[f"blend k={k}"] = psnr(closing_solve(problem, agreement_blend(x0, classical, k * scale),
                                                             c.image_anchor, mu, c.iters)[0], ref)
                else:
                    out[f"blend k={k}"] = psnr(agreement_blend(closed, classical, k * scale)[0], ref)
            print(spec, {k: round(v, 2) for k, v in out.items()}, flush=True)


if __name__ == "__main__":
    main()
