"""Trace the closing solve per iteration: from the prior's sample (the closing solve at anchor 0) and from zero (CS).

    OMP_NUM_THREADS=2 python scripts/probe_closing.py 10000:kspace-r8:val head-pydeface:kspace-r8:test

For each ``volume:case:split`` (bench_recon's simulation, scripts/benchlib.py) one posterior sample at the shipped
defaults, then FISTA on the CS objective ``1/2 ||A x - y||^2 + mu ||W x||_1`` (the closing solve with anchor 0,
every coil) from that sample and from zero. Per checkpoint iteration: PSNR against the reference, the objective's
gap above the lowest value either run reached (percent), and the data term against the noise's expected
``N sigma^2``. It shows whether the solve's own numbers can tell a good early stop from a bad one (docs/methods.md).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchlib import recon_config, simulate

CHECKPOINTS = (0, 10, 15, 20, 25, 30, 40, 60)


def trace(problem, x0: np.ndarray, mu: float, ref: np.ndarray, iters: int) -> list[tuple[int, float, float, float]]:
    """(iteration, PSNR, objective, data term) at :data:`CHECKPOINTS` of FISTA from ``x0``."""
    import sigpy as sp

    from ldp_med.metrics import psnr

    op, y = problem.operator, problem.y
    aty = op.A_adjoint(y)[0].numpy()
    W = sp.linop.Wavelet(tuple(aty.shape), wave_name="db4")
    prox = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, mu), W)

    def gradf(x):
        return (op.normal(torch.from_numpy(x)[None])[0].numpy() - aty).astype(np.complex64)

    def row(it, x):
        data = float(((op.A(torch.from_numpy(x)[None]) - y).abs() ** 2).sum()) / 2
        return it, psnr(np.abs(x), ref), data + mu * float(np.abs(W(x)).sum()), data

    alg = sp.alg.GradientMethod(gradf, x0.copy(), 1.0, proxg=prox, max_iter=iters, accelerate=True)
    rows, it = [row(0, alg.x)], 0
    while not alg.done():
        alg.update()
        it += 1
        if it in CHECKPOINTS:
            rows.append(row(it, alg.x))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", help="volume:case:split, e.g. 10000:kspace-r8:val")
    ap.add_argument("--iters", type=int, default=60)
    args = ap.parse_args()
    from ldp_med.io.kspace import load_kspace
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.reconstruct import build_problem
    from ldp_med.sampling.posterior import reconstruct as sample

    prior = load_pretrained()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.specs:
            name, case, split = spec.split(":")
            path = Path(tmp) / f"{name}-{case}.h5"
            simulate(name, case, path, split)
            data = load_kspace(path)
            cfg = recon_config(case, "prior")
            problem = build_problem(data, "kspace", cfg)
            noise = int((problem.y.abs() > 0).sum()) * problem.noise_std**2
            x0 = np.ascontiguousarray(sample(prior, problem, cfg.posterior).samples[0].astype(np.complex64))
            runs = {"from the prior": trace(problem, x0, cfg.baseline.cs_lambda, data.reference, args.iters),
                    "from zero (CS)": trace(problem, np.zeros_like(x0), cfg.baseline.cs_lambda, data.reference, args.iters)}
            low = min(r[2] for rows in runs.values() for r in rows)
            print(f"\n{spec}\n\n| start | iteration | PSNR (dB) | objective gap (%) | data term / (N sigma^2) |\n|---|---|---|---|---|")
            for start, rows in runs.items():
                for it, p, f, d in rows:
                    print(f"| {start} | {it} | {p:.2f} | {100 * (f / low - 1):.2f} | {d / noise:.3f} |")


if __name__ == "__main__":
    main()
