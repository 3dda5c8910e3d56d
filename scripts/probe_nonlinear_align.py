"""A nonlinear placement after the affine: how close to each brain voxel's true position (issue 17, a lead).

    cd scripts && OMP_NUM_THREADS=1 python probe_nonlinear_align.py --out ../docs/probe_nonlinear_align.md

bench_align scores the affine estimate against the least-squares affine of a synthetic subject's deformation; the
subject's voxels themselves sit an elastic field away from any affine (3.5 mm RMS). This probe scores placements
against the true MNI position of every brain voxel (``bench_align.synthetic_truth``) for validation subjects:

- the least-squares affine (the best any affine can do),
- ``ldp_med.align.estimate_alignment`` by mutual information alone (``refine_iters=()``: session 39's estimate),
- that affine followed by dipy's SyN (``SymmetricDiffeomorphicRegistration``, ``CCMetric``) against a reference
  *synthesised in the input's contrast* (``ldp_med.align.contrast_matched_reference``): the template's tissue maps (GM, WM, CSF, its T1) on the model grid,
  combined with the least-squares weights that best explain the input through the affine. Cross-correlation needs
  the same contrast on both sides; the weights give it for T2w, PD and FLAIR as for T1w. The synthetic subjects are
  rendered from these same maps, so this reference flatters them: real scans are the test that matters.

CPU seconds: SyN's alone (the affine's are bench_align's). The last two columns score against the least-squares
affine of the true positions (bench_align's truth): the mutual-information affine, and the least-squares affine of
SyN's placement (what ``estimate_alignment`` now ends with, on the grid reduced by 2: ``--reduce 2 --iters 10 10``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_align import synthetic_truth
from benchlib import emit, require_validation

from ldp_med.align import (AlignConfig, _reduced, _template, contrast_matched_reference, estimate_alignment,
                           lstsq_affine, placement_rms)
from ldp_med.data import synthetic

def main() -> None:
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10000, 10008)))
    ap.add_argument("--iters", type=int, nargs="+", default=[10, 10, 5], help="SyN iterations per level, coarse first")
    ap.add_argument("--reduce", type=int, default=1, help="run SyN on the input reduced by this factor (align._reduced)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    ref, ref_aff = _template()
    world = np.indices(ref.shape).transpose(1, 2, 3, 0) @ ref_aff[:3, :3].T + ref_aff[:3, 3]  # MNI mm of each voxel
    lines = ["| subject | contrast | least-squares affine (mm) | mutual-information affine (mm) | + SyN (mm) | SyN CPU s | "
             "mutual-information affine vs least-squares (mm) | SyN's least-squares affine vs least-squares (mm) |",
             "|---|---|---|---|---|---|---|---|"]
    for seed in args.seeds:
        vol, m_true, brain, y = synthetic_truth(seed)
        x = np.argwhere(brain) @ vol.affine[:3, :3].T + vol.affine[:3, 3]

        def rms(m=None, points=None):
            p, true = (x @ m[:3, :3].T + m[:3, 3], y) if points is None else (points, y[sel])
            return float(np.sqrt(((p - true) ** 2).sum(1).mean()))

        matrix = estimate_alignment(vol, AlignConfig(refine_iters=())).matrix  # mutual information alone
        c0 = time.process_time()
        static, s_aff = vol.data.astype(np.float64) / np.percentile(vol.data, 99.5), vol.affine
        if args.reduce > 1:
            static, s_aff = _reduced(static, s_aff, args.reduce, args.reduce / 2)
        moving, _ = contrast_matched_reference(static, s_aff, matrix)
        mapping = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=list(args.iters)).optimize(
            static, moving, static_grid2world=s_aff, moving_grid2world=ref_aff, prealign=matrix)
        cpu = time.process_time() - c0
        k = args.reduce  # the reduced grid holds every k-th voxel of the input's, at the same world positions
        sel = (np.argwhere(brain) % k == 0).all(1)
        placed = np.stack([mapping.transform(world[..., a], interpolation="linear") for a in range(3)], -1)[brain[::k, ::k, ::k]]
        contrast = synthetic.subject_meta(seed)["contrast"]
        # the affine part of the placement: its least-squares affine over the brain (the truth's definition)
        fitted = lstsq_affine(x[sel], placed)
        lines.append(f"| {seed} | {contrast} | {rms(m_true):.2f} | {rms(matrix):.2f} | {rms(points=placed):.2f} | {cpu:.1f} | "
                     f"{placement_rms(matrix, m_true, x):.2f} | {placement_rms(fitted, m_true, x):.2f} |")
        print(lines[-1], flush=True)
    emit(lines + ["", f"SyN level_iters {list(args.iters)}, CCMetric(3) defaults, reference "
                      "ldp_med.align.contrast_matched_reference (gm, wm, csf, t1)."], args.out)


if __name__ == "__main__":
    main()
