"""Alignment benchmark (issue 17): placement error (mm RMS over the brain) and seconds per volume.

    OMP_NUM_THREADS=1 python scripts/bench_align.py --out docs/results_align.md

Volumes (none of them trained on by the aligner, which has no training; the synthetic ones are
validation subjects, never test seeds 20000+):
- synthetic validation subjects 10000-10007 (T1w / T2w / PD / FLAIR, skull-stripped, with noise). Their
  *true* placement is known: each is the template deformed by MONAI ``Rand3DElastic`` (small random affine
  + elastic field), and warping the voxel-index maps with the same seed gives, for every subject voxel,
  the template position it shows; the least-squares affine of that map over the brain is the truth
  (the elastic part left over, ~3.5 mm RMS, is what no affine can follow).
- real scans shipped by installed packages (offline): nibabel's ``tests/data/anatomical.nii`` (T1, a
  66x82x50 mm part of a brain, 2 mm, LAS voxel order) and dipy's ``data/files/aniso_vox.nii.gz`` (a b0
  diffusion volume, T2-like contrast, whole brain, 4x4x5 mm, LPS). Their placement in MNI is unknown,
  so the reference is the estimate on the unmoved scan, composed with the known move ("consistency").

Cases (each a copy with a known rigid world move ``T``; the truth of the copy is ``M_true @ inv(T)``;
the axis, direction and side are drawn from a seed per (volume, case)):
- ``orig``: the volume as it is (synthetic: vs the true placement);
- ``shift40``: a 40 mm translation; ``rot20``: a 20 degree rotation (random axis, about the brain's centre)
  plus up to 20 mm translation;
- ``crop-half``: half the field of view (a random axis and side) after a 10 degree rotation and up to
  20 mm translation;
- ``1mm``: resampled to 1 mm voxels, 15 degrees, up to 30 mm; ``aniso-lps``: 1 x 1 x 4 mm voxels in LPS
  order, 15 degrees, up to 30 mm (both trilinear from the original; the world positions are exact); ``coarse``:
  4 x 4 x 5 mm voxels (as an EPI volume, e.g. dipy's b0), 15 degrees, up to 30 mm (added in session 35).

Error: RMS over the brain voxels inside the copy's field of view of ``|M_est(x) - M_true(x)|`` (mm).
Seconds: wall and process CPU of :func:`ldp_med.align.estimate_alignment` (one thread; the CPU column is
the one to read on a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

from benchlib import emit, head_of, moved_copy, real_scans, require_validation, rigid
from ldp_med.align import AlignConfig, estimate_alignment, lstsq_affine, placement_rms
from ldp_med.data import synthetic
from ldp_med.io.nifti import load_nifti
from ldp_med.io.volume import Volume

CASES = ("orig", "shift40", "rot20", "crop-half", "1mm", "aniso-lps", "coarse")


def synthetic_truth(seed: int) -> tuple[Volume, np.ndarray, np.ndarray, np.ndarray]:
    """(noisy subject, true affine subject world -> MNI world, brain mask, true MNI position of every brain
    voxel (N, 3), in ``np.argwhere(mask)`` order) of validation subject ``seed``."""
    subj = synthetic.make_subject(seed, return_tissue=True)
    src = synthetic.deformation_source(seed)  # the template voxel each subject voxel shows
    brain = subj["tissue"].sum(0) > 0.5
    aff = subj["affine"]
    x = np.argwhere(brain) @ aff[:3, :3].T + aff[:3, 3]
    y = src[:, brain].T @ aff[:3, :3].T + aff[:3, 3]
    return Volume(subj["image"], aff, {"source": f"validation subject {seed}"}), lstsq_affine(x, y), brain, y


def make_case(vol: Volume, case: str, centre: np.ndarray, seed: int) -> tuple[Volume, np.ndarray]:
    """The copy of ``case`` and its world move (drawn from ``seed``)."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    if case == "orig":
        return vol, np.eye(4)
    if case == "shift40":
        move = rigid(0.0, [0, 0, 1], 40.0 * direction, centre)
        return moved_copy(vol, move), move
    if case == "rot20":
        move = rigid(20.0, axis, rng.uniform(0, 20) * direction, centre)
        return moved_copy(vol, move), move
    if case == "crop-half":
        move = rigid(10.0, axis, rng.uniform(0, 20) * direction, centre)
        crop = (int(rng.integers(3)), ("lo", "hi")[int(rng.integers(2))])
        return moved_copy(vol, move, crop=crop), move
    if case == "1mm":
        move = rigid(15.0, axis, rng.uniform(0, 30) * direction, centre)
        return moved_copy(vol, move, vox=(1.0, 1.0, 1.0)), move
    if case == "aniso-lps":
        move = rigid(15.0, axis, rng.uniform(0, 30) * direction, centre)
        return moved_copy(vol, move, vox=(1.0, 1.0, 4.0), flip=(0, 1)), move
    if case == "coarse":
        move = rigid(15.0, axis, rng.uniform(0, 30) * direction, centre)
        return moved_copy(vol, move, vox=(4.0, 4.0, 5.0)), move
    raise ValueError(case)


def run_volume(name: str, vol: Volume, m_true: np.ndarray | None, mask: np.ndarray, cases, cfg: AlignConfig,
               seed: int, true_points: np.ndarray | None = None) -> list[dict]:
    """Rows for one volume; ``m_true`` None means: the estimate on the unmoved volume is the reference.

    ``true_points``: the true MNI position of every voxel of ``mask`` (synthetic subjects); the "visible"
    column's reference is then the least-squares affine of those inside the copy's field of view."""
    pts = np.argwhere(mask) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    centre = pts.mean(0)
    rows = []
    ref, unmoved = m_true, None
    for case in ["orig"] + [c for c in cases if c != "orig"]:
        copy, move = make_case(vol, case, centre, seed * 100 + CASES.index(case))  # the same copy whatever --cases
        est = estimate_alignment(copy, cfg)
        if unmoved is None:  # consistency reference: the unmoved scan's estimate
            unmoved = est.matrix
            ref = unmoved if ref is None else ref
        moved = pts @ move[:3, :3].T + move[:3, 3]
        vox = (np.c_[moved, np.ones(len(moved))] @ np.linalg.inv(copy.affine).T)[:, :3]
        inside = np.all((vox > -0.5) & (vox < np.array(copy.shape) - 0.5), axis=1)
        m_copy = ref @ np.linalg.inv(move)
        m_vis = m_copy if true_points is None else lstsq_affine(pts[inside], true_points[inside]) @ np.linalg.inv(move)
        row = dict(volume=name, case=case, shape="x".join(map(str, copy.shape)),
                   rms=placement_rms(est.matrix, m_copy, moved[inside]),
                   start=placement_rms(est.start, m_copy, moved[inside]),
                   consistency=placement_rms(est.matrix, unmoved @ np.linalg.inv(move), moved[inside]),
                   visible=placement_rms(est.matrix, m_vis, moved[inside]),
                   wall=est.seconds, cpu=est.cpu_seconds, stages=" > ".join(est.stages),
                   reference="truth" if m_true is not None else "unmoved estimate")
        print(f"{name:38s} {case:10s} {row['rms']:6.2f} mm ({row['visible']:5.2f} visible, {row['consistency']:5.2f} vs "
              f"unmoved)  {est.cpu_seconds:5.1f} s cpu",
              file=sys.stderr, flush=True)
        if case != "orig" or "orig" in cases:
            rows.append(row)
    return rows


HEADER = [
    "# Alignment to the model space (issue 17)", "",
    "`ldp_med.align.estimate_alignment` (dipy mutual information, translation -> rigid -> affine, then the least-squares affine of a SyN placement) on moved copies "
    "of held-out volumes; see scripts/bench_align.py for the volumes, the cases and the reference of each row. "
    "RMS error: mm over the brain voxels inside the copy's field of view (target <= 2 mm); start error: the "
    "same for the start (centres of mass + search); visible: the same against the least-squares affine of the "
    "true placement of the brain voxels inside the copy's field of view (synthetic; the best any affine can do "
    "there, equal to the truth where the whole brain is in view); vs unmoved: the same against the estimate on the unmoved volume "
    "composed with the move (how much the move, crop or resampling changed the estimate); CPU s: process CPU seconds on one thread (target <= 15 s; "
    "wall s is inflated on a shared machine).", ""]


def table(rows: list[dict], cfg: AlignConfig) -> list[str]:
    lines = HEADER + ["| volume | case | grid | reference | RMS error (mm) | visible (mm) | vs unmoved (mm) | start error "
                      "(mm) | stages | wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['volume']} | {r['case']} | {r['shape']} | {r['reference']} | {r['rms']:.2f} | "
                     f"{r['visible']:.2f} | {r['consistency']:.2f} | {r['start']:.1f} | {r['stages']} | {r['wall']:.1f} | "
                     f"{r['cpu']:.1f} |")
    syn = [r for r in rows if r["reference"] == "truth"]
    real = [r for r in rows if r["reference"] != "truth"]
    lines.append("")
    for label, group in (("synthetic (vs truth)", syn), ("real (vs unmoved estimate)", real)):
        if not group:
            continue
        e = np.array([r["rms"] for r in group])
        c = np.array([r["cpu"] for r in group])
        w = np.array([r["wall"] for r in group])
        lines.append(f"- {label}: {len(group)} estimates; RMS error mean {e.mean():.2f} mm, max {e.max():.2f} mm, "
                     f"<= 2 mm in {int((e <= 2).sum())}/{len(e)}; CPU s mean {c.mean():.1f}, max {c.max():.1f}; "
                     f"wall s mean {w.mean():.1f}, max {w.max():.1f}")
        if group is syn:
            v = np.array([r["visible"] for r in group])
            lines.append(f"- synthetic (vs the best affine of the visible brain): RMS error mean {v.mean():.2f} mm, "
                         f"max {v.max():.2f} mm, <= 2 mm in {int((v <= 2).sum())}/{len(v)}")
    changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != f.default}
    lines.append(f"- AlignConfig: {'defaults' if not changed else changed}; OMP_NUM_THREADS="
                 f"{os.environ.get('OMP_NUM_THREADS', 'unset')}")
    return lines


def parse_set(items) -> AlignConfig:
    kw = {}
    types = {f.name: f.type for f in dataclasses.fields(AlignConfig)}
    for item in items or []:
        key, value = item.split("=", 1)
        if key not in types:
            raise SystemExit(f"unknown AlignConfig field {key!r}")
        kw[key] = tuple(int(v) for v in value.split(",")) if "tuple" in str(types[key]) else (
            value.lower() in ("1", "true", "yes") if types[key] in (bool, "bool") else float(value))
        if types[key] in (int, "int"):
            kw[key] = int(kw[key])
    return AlignConfig(**kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10000, 10008)),
                    help="synthetic validation subjects (10000-10099)")
    ap.add_argument("--no-real", action="store_true", help="skip the real scans that packages ship")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE", help="AlignConfig fields (tuning)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    cfg = parse_set(args.set)

    rows: list[dict] = []
    for seed in args.seeds:
        vol, m_true, brain, true_points = synthetic_truth(seed)
        name = f"val {seed} ({synthetic.subject_meta(seed)['contrast']})"
        rows += run_volume(name, vol, m_true, brain, args.cases, cfg, seed, true_points)
    if not args.no_real:
        for k, (name, path) in enumerate(real_scans().items()):
            vol = load_nifti(path)
            rows += run_volume(name, vol, None, head_of(vol), args.cases, cfg, 900 + k)
    emit(table(rows, cfg), args.out)


if __name__ == "__main__":
    main()
