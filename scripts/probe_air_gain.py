"""Tune the air step (``closing.air*``, ``ldp_med.sampling.closing.air_gain``) in minutes: each simulated *validation*
volume (never a test subject) is reconstructed once with the prior, the air step's inputs are kept (the closed
samples, the image, the observed and the noise energies), and every grid point's air step is then scored on them.

    cd scripts && OMP_NUM_THREADS=2 python probe_air_gain.py --case denoise --heads --crops --necks --noisy --faint \\
        --grid closing.air=1,1.5,2 closing.air_floor=0.2,0.25,0.3 closing.air_erode=0,1

The same result as ``tune_prior.py --grid`` over these fields (one reconstruction per volume instead of one per grid
point and volume: twelve 2 mm volumes take 10-15 minutes once, a grid point 10-20 seconds); ``--per-volume`` also
prints each volume's PSNR under its row. The rows are mean PSNR / SSIM against the noise-free reference
(bench_recon's acquisitions and ``evaluate``); the first row is each volume's settings as captured (its regime's
where one applies; labelled with the first volume's): the shipped ones when the capture was made, and a field added
since reads its class default (``--captures`` reuses captures: delete them to capture today's). The validation
volumes are synthetic: session 49's air step that gained 2 dB here lost 4.8 on a real template head
(docs/results.md, "The air judged by the air alone"); benchmark the test heads (bench_recon.py --heads) before
shipping what this finds.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import pickle
import tempfile
from pathlib import Path

import numpy as np
from benchlib import CASES, add_volume_kinds, emit, recon_config, require_validation, simulate, volume_names

import ldp_med.reconstruct as R
import ldp_med.sampling.closing as C
from ldp_med.io.kspace import load_kspace
from ldp_med.metrics import evaluate
from ldp_med.models.pretrained import load_pretrained

FIELDS = ("air", "air_floor", "air_smooth", "air_erode", "air_blur")


def capture(path: Path, case: str, prior) -> dict:
    """One prior reconstruction of ``path``; the air step's inputs (closed samples, image, energies) as it ran."""
    kept, air_gain, air_gains = {}, C.air_gain, R.air_gains

    def inputs(image, energy, noise, *args, **kwargs):
        kept.update(image=image, energy=energy, noise=noise)
        return np.ones(np.shape(image), np.float32)

    def gains(problem, closed, closing, *args, **kwargs):
        kept.update(closed=closed, closing=closing)
        return air_gains(problem, closed, closing, *args, **kwargs)

    C.air_gain, R.air_gains = inputs, gains
    try:
        R.reconstruct_file(path, recon_config(case, "prior"), prior=prior)
    finally:
        C.air_gain, R.air_gains = air_gain, air_gains
    if "closing" not in kept:
        raise SystemExit(f"{case}: the task's air step is off (closing.air 0); nothing to tune")
    return kept


def air_step(kept: dict, c, air: np.ndarray | None = None) -> np.ndarray:
    """The (X, Y, Z) mean magnitude of the closed samples after the air step with the settings of ``c`` (a
    ClosingConfig), as ``reconstruct._close`` runs it: one air mask for the gains and the blur (``air``, if the caller
    has it: :func:`ldp_med.sampling.closing.air_mask` of ``kept["image"]`` with ``c``'s settings)."""
    out = kept["closed"]
    if c.air and c.air_floor:
        air = C.air_mask(kept["image"], c.air_floor, c.air_smooth, c.air_erode) if air is None else air
        gain = C.air_gain(kept["image"], kept["energy"], kept["noise"], c.air, c.air_floor, c.air_smooth, c.air_erode,
                          air)
        out = C.air_blur(out * gain, air, c.air_blur)
    return np.abs(out).mean(0)


def score(kept: dict, c, ref: np.ndarray) -> dict:
    """``evaluate`` of :func:`air_step` against ``ref``."""
    return evaluate(air_step(kept, c), ref)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001])
    ap.add_argument("--case", default="denoise", choices=[c for c in CASES if c != "superres"])
    ap.add_argument("--grid", nargs="+", required=True, help=f"closing.FIELD=v1,v2,... for FIELD in {FIELDS}")
    add_volume_kinds(ap)
    ap.add_argument("--captures", default=None,
                    help="a folder that keeps each volume's capture (<case>-<volume>.pkl): read when there, written when "
                         "not, so a later grid, or a changed air step, is scored without reconstructing again (a capture is "
                         "of this code's reconstruction: empty the folder when the model or the steps before the air "
                         "step change)")
    ap.add_argument("--per-volume", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    grid = {}
    for g in args.grid:
        key, values = g.split("=", 1)
        field = key.removeprefix("closing.")
        if field not in FIELDS:
            ap.error(f"--grid: {key} is not one of closing.{{{','.join(FIELDS)}}}")
        grid[field] = [float(v) if field != "air_erode" else int(v) for v in values.split(",")]
    names = volume_names(args)
    task, prior = CASES[args.case]["task"], load_pretrained()
    volumes = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            kept = Path(args.captures) / f"{args.case}-{name.replace(':', '-')}.pkl" if args.captures else None
            if kept is not None and kept.exists():
                volumes.append(pickle.loads(kept.read_bytes()))
                continue
            path = Path(tmp) / f"{name.replace(':', '-')}{'.h5' if task == 'kspace' else '.nii.gz'}"
            ref = simulate(name, args.case, path, split="val")
            ref = load_kspace(path).reference if task == "kspace" else ref
            volumes.append((capture(path, args.case, prior), ref))
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                kept.write_bytes(pickle.dumps(volumes[-1]))
            print(f"captured {name}", flush=True)
    lines = ["| " + " | ".join(grid) + " | PSNR (dB) | SSIM |", "|" + "---|" * (len(grid) + 2)]
    per = []
    for values in [None, *itertools.product(*grid.values())]:  # None: each volume's own settings (its regime's)
        scores = [score(kept, kept["closing"] if values is None else
                        dataclasses.replace(kept["closing"], **dict(zip(grid, values))), ref) for kept, ref in volumes]
        if values is None:
            label = " | ".join(str(getattr(volumes[0][0]["closing"], f)) for f in grid) + " (as captured)"
        else:
            label = " | ".join(map(str, values))
        psnr, ssim = np.mean([s["psnr"] for s in scores]), np.mean([s["ssim"] for s in scores])
        lines.append(f"| {label} | {psnr:.2f} | {ssim:.4f} |")
        print(lines[-1], flush=True)
        if args.per_volume:
            per.append(f"\n{label}: " + "; ".join(f"{n} {s['psnr']:.2f}" for n, s in zip(names, scores)))
    emit(lines + per, args.out)


if __name__ == "__main__":
    main()
