"""How much of the prior's lift over CS is the air's: CS and the prior, each with and without the air step
(``closing.air``, ``ldp_med.sampling.closing.air_gain``), on simulated *validation* volumes (never test subjects).

    cd scripts && OMP_NUM_THREADS=2 python probe_air.py --case kspace-r4 --volumes 10002 head:10002 noisy:10002

CS with the air step: sigpy's L1-wavelet CS (the baseline, untouched), then the same gain the prior's closing uses
(``reconstruct.air_gains``: the noise energy from the same short perturbed solve, on CS's objective),
with the task's noise multiple and floor. Prints one line per volume (PSNR in dB against the reference).
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
from ldp_med.io.kspace import load_kspace  # noqa: E402
from ldp_med.metrics import evaluate  # noqa: E402
from ldp_med.models.pretrained import load_pretrained  # noqa: E402
from ldp_med.sampling.closing import closing_solve  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="kspace-r4", choices=[c for c in CASES if c.startswith("kspace")])
    ap.add_argument("--volumes", nargs="+", default=["10002", "head:10002", "noisy:10002"])
    args = ap.parse_args()
    require_validation([int(v.rsplit(":", 1)[-1]) for v in args.volumes])
    prior = load_pretrained()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.volumes:
            path = Path(tmp) / f"{name.replace(':', '-')}.h5"
            simulate(name, args.case, path, split="val")
            data = load_kspace(path)
            cfg = recon_config(args.case, "cs")
            problem = R.build_problem(data, "kspace", cfg)
            c, b, k = R.settle(cfg, problem).closing, cfg.baseline, problem.kspace
            x = baselines.cs_l1_wavelet(k.kspace, k.mask, k.sensitivity_maps, b.cs_lambda, b.cs_iters, b.cs_wavelet)
            x = np.asarray(x, np.complex64)[None]
            cs_solve = functools.partial(closing_solve, problem, x, 0.0, b.cs_lambda, wavelet=b.cs_wavelet)  # CS's objective
            cs = np.abs(x[0])
            gain = R.air_gains(problem, x, c, 0, cs_solve)
            row = {"cs": cs, "cs + air": cs * gain}
            for air in (0.0, None):
                pc = recon_config(args.case, "prior")
                pc = dataclasses.replace(pc, closing=dataclasses.replace(pc.closing, air=air))
                row["prior" if air is None else "prior without air"] = R.reconstruct_file(path, pc, prior=prior).volume.data
            print(name, " | ".join(f"{m} {evaluate(v, data.reference)['psnr']:.2f}" for m, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
