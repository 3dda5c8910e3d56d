"""Time ``ldp_med.align.estimate_alignment`` alone on a fixed set of volumes (for paired old/new comparisons).

Validation subjects 10000 and 10001 as orig / rot20 / crop-half copies (scripts/bench_align.py's cases, their moves
drawn from the subject's seed and about its brain's centre, not bench_align's per-case seeds) and
the two real scans that packages ship; one warm-up estimate first. Prints wall and CPU seconds per volume and the
total CPU. Run it against another checkout with PYTHONPATH=<that checkout> (see docs/results.md, "A cheaper start
search"):

    OMP_NUM_THREADS=1 farm-bench -n 3 --warmup 0 --timeout 900 --vs "sh -c 'PYTHONPATH=<old> exec python scripts/time_align.py >> old.txt'" -- sh -c 'exec python scripts/time_align.py >> new.txt'
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import make_case, synthetic_truth  # noqa: E402
from benchlib import real_scans  # noqa: E402

from ldp_med import align  # noqa: E402
from ldp_med.io.nifti import load_nifti  # noqa: E402


def main() -> None:
    vols = []
    for seed in (10000, 10001):
        vol, _, brain, _ = synthetic_truth(seed)
        centre = np.argwhere(brain).mean(0) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
        vols += [(f"{seed} {case}", make_case(vol, case, centre, seed)[0]) for case in ("orig", "rot20", "crop-half")]
    vols += [(name, load_nifti(path)) for name, path in real_scans().items()]
    align.estimate_alignment(vols[0][1])  # warm-up: imports, the template
    total = 0.0
    for name, vol in vols:
        est = align.estimate_alignment(vol)
        total += est.cpu_seconds
        print(f"{name:34s} {est.seconds:6.2f} s wall {est.cpu_seconds:6.2f} s cpu", flush=True)
    print(f"total cpu {total:.2f} s ({align.__file__})")


if __name__ == "__main__":
    main()
