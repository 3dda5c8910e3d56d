"""How much of the prior's lift over the classical baseline is the air's: the baseline and the prior, each with and
without the air step (``closing.air``, ``ldp_med.sampling.closing.air_gain``), on simulated *validation* volumes
(never test subjects).

    cd scripts && OMP_NUM_THREADS=2 python probe_air.py --case kspace-r4 --volumes 10002 head:10002 noisy:10002
    cd scripts && OMP_NUM_THREADS=2 python probe_air.py --case denoise --volumes 10002 head:10002 faint:10002
    cd scripts && OMP_NUM_THREADS=2 python probe_air.py --case kspace-r4 --spin 8 --volumes 10002 head:10002

``--spin N`` (k-space): also CS's own objective solved with cycle spinning (``closing_solve(..., spin=N)`` from zero,
the baseline's iterations), with and without the air step, and the prior's rows with ``closing.spin`` N: how much of
the spun closing's gain a classical CS with the same spinning gets.

k-space: sigpy's L1-wavelet CS (the baseline, untouched), then the same gain the prior's closing uses
(``reconstruct.air_gains``: the noise energy from the same short perturbed solve, on CS's objective). Denoise: the
task's classical method (NLM) and the same gain (the noisy input's energy against ``2 sigma^2``). Both with the
task's noise multiple and floor (its own for denoise, where the shipped setting may be 0: ``--air``). Prints one
line per volume (PSNR in dB against the reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import CASES, recon_config, require_validation, simulate  # noqa: E402

from ldp_med import baselines  # noqa: E402
from ldp_med import reconstruct as R  # noqa: E402
from ldp_med.io import load_volume  # noqa: E402
from ldp_med.io.kspace import load_kspace  # noqa: E402
from ldp_med.metrics import evaluate  # noqa: E402
from ldp_med.models.pretrained import load_pretrained  # noqa: E402
from ldp_med.sampling.closing import closing_solve  # noqa: E402
from ldp_med.tasks import task_setting  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="kspace-r4", choices=[c for c in CASES if c != "superres"])
    ap.add_argument("--volumes", nargs="+", default=["10002", "head:10002", "noisy:10002"])
    ap.add_argument("--air", type=float, default=None, help="the noise multiple (default: the task's)")
    ap.add_argument("--spin", type=int, default=0, help="k-space: also CS with cycle spinning, and the prior's closing.spin")
    args = ap.parse_args()
    require_validation([int(v.rsplit(":", 1)[-1]) for v in args.volumes])
    prior = load_pretrained()
    kspace = args.case.startswith("kspace")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.volumes:
            path = Path(tmp) / f"{name.replace(':', '-')}{'.h5' if kspace else '.nii.gz'}"
            reference = simulate(name, args.case, path, split="val")
            method = "cs" if kspace else task_setting(CASES[args.case]["task"], "closing.classical")
            cfg = recon_config(args.case, method)
            data = load_kspace(path) if kspace else load_volume(path)
            problem = R.build_problem(data, cfg.task, cfg)
            reference = data.reference if kspace else reference  # k-space: the file's, in its units
            c, b = R.settle(cfg, problem).closing, cfg.baseline
            c = c if args.air is None else dataclasses.replace(c, air=args.air)
            if kspace:
                k = problem.kspace
                x = baselines.cs_l1_wavelet(k.kspace, k.mask, k.sensitivity_maps, b.cs_lambda, b.cs_iters, b.cs_wavelet)
                x = np.asarray(x, np.complex64)[None]

                def cs_objective(start, **spin):  # CS's objective from ``start`` (lam 0: the start is only a start)
                    return functools.partial(closing_solve, problem, start, 0.0, b.cs_lambda, wavelet=b.cs_wavelet, **spin)

                solve = cs_objective(x)
            else:
                x, solve = np.asarray(R.SOLVERS[cfg.task, method](problem, cfg, None, False)[0], np.float32)[None], None
            base = np.abs(x[0])
            row = {method: base, f"{method} + air": base * R.air_gains(problem, x, c, 0, solve)}
            if kspace and args.spin:
                spin = {"spin": args.spin, "spin_seed": 0}
                xs = cs_objective(np.zeros_like(x), **spin)(iters=b.cs_iters)
                row[f"{method} spun"] = np.abs(xs[0])
                row[f"{method} spun + air"] = np.abs(xs[0]) * R.air_gains(problem, xs, c, 0, cs_objective(xs, **spin))
            for air in (0.0, c.air):
                pc = recon_config(args.case, "prior")
                pc = dataclasses.replace(pc, closing=dataclasses.replace(pc.closing, air=air, spin=args.spin or None))
                row["prior" if air else "prior without air"] = R.reconstruct_file(path, pc, prior=prior).volume.data
            print(name, " | ".join(f"{m} {evaluate(v, reference)['psnr']:.2f}" for m, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
