"""Where the error of the air step's output lies, per captured *validation* volume (``probe_air_gain.py
--captures``): the share of the squared error in the air mask and in bands of distance from the head, and the PSNR /
SSIM if the air mask held the truth (all of it, or the first 4 voxels): how much an air step could still gain.

    cd scripts && OMP_NUM_THREADS=2 python probe_air_error.py --captures ../cache/air_captures --case denoise

Each capture is scored with the task's settings as shipped now (``TASK_SETTINGS``), not the ones it was captured with.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np
from benchlib import CASES, emit
from probe_air_gain import air_step

from ldp_med.config import ClosingConfig
from ldp_med.metrics import evaluate
from ldp_med.tasks import with_task_settings

BANDS = ((0, 2), (2, 4), (4, 8), (8, np.inf))  # voxels from the head (the air mask's distance transform)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captures", required=True)
    ap.add_argument("--case", default="denoise", choices=[c for c in CASES if c != "superres"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from scipy import ndimage

    import ldp_med.sampling.closing as C

    task = CASES[args.case]["task"]
    c = with_task_settings(ClosingConfig(), "closing", task, CASES[args.case].get("accel", 1.0))
    band_names = " | ".join(f"{a:g}-{b:g}" for a, b in BANDS)
    lines = [f"| volume | PSNR / SSIM | share in the air | {band_names} | truth in the air | truth within 4 |",
             "|" + "---|" * (5 + len(BANDS))]
    for path in sorted(Path(args.captures).glob(f"{args.case}-*.pkl")):
        kept, ref = pickle.loads(path.read_bytes())
        ref = np.asarray(ref, np.float32)
        air = C.air_mask(kept["image"], c.air_floor, c.air_smooth, c.air_erode)
        out = air_step(kept, c, air)
        now = evaluate(out, ref)
        dist, err = ndimage.distance_transform_edt(air), (out - ref) ** 2
        total = float(err.sum())
        shares = [float(err[air & (dist > a) & (dist <= b)].sum()) / total for a, b in BANDS]
        truth, near = evaluate(np.where(air, ref, out), ref), evaluate(np.where(air & (dist <= 4), ref, out), ref)
        lines.append(f"| {path.stem.removeprefix(args.case + '-')} | {now['psnr']:.2f} / {now['ssim']:.3f} | "
                     f"{float(err[air].sum()) / total:.2f} | " + " | ".join(f"{s:.2f}" for s in shares) +
                     f" | {truth['psnr']:.2f} / {truth['ssim']:.3f} | {near['psnr']:.2f} / {near['ssim']:.3f} |")
        print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
