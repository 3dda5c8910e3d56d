"""How much of each validation volume the model grid covers, centred and aligned: of the whole field of view (the
rule of `posterior.min_coverage` until session 47) and of the anatomy (`SpaceMap.foreground_coverage`, the rule
since). A decision changes only where the two sit on either side of min_coverage (0.5): DIFFERS.

    cd scripts && OMP_NUM_THREADS=2 python probe_coverage.py [--real]

Validation seeds 10000-10003 as brains, synthetic heads, half fields of view, necks, parts and coarse copies, k-space
R=4 as tune_prior.py simulates them; ``--real`` adds nibabel's and dipy's real scans (benchmarked, never tuned on).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import benchlib

from ldp_med.config import ReconstructConfig
from ldp_med.models.pretrained import load_pretrained
from ldp_med.reconstruct import build_problem, load_input
from ldp_med.space import SpaceMap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", action="store_true", help="also the real scans of benchlib.REAL")
    args = ap.parse_args()
    prior = load_pretrained(None, with_unet=False)
    names = [f"{k}{s}" for k in ("", "head:", "crop:", "neck:", "part:", "coarse:") for s in range(10000, 10004)]
    names += list(benchlib.REAL) if args.real else []
    print("| volume | centred: field of view | anatomy | aligned: field of view | anatomy |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = Path(tmp) / f"{name.replace(':', '-')}.h5"
            benchlib.simulate(name, "kspace-r4", path, split="val")
            problem = build_problem(load_input(path, "kspace", None), "kspace", ReconstructConfig())
            row = [name]
            for align in (False, True):
                space = SpaceMap.for_volume(problem.pinv, prior.config, align=align)
                fov, anatomy = space.coverage_fraction, space.foreground_coverage(problem.pinv.data)
                row += [f"{fov:.3f}", f"{anatomy:.3f}" + (" DIFFERS" if (fov < 0.5) != (anatomy < 0.5) else "")]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
