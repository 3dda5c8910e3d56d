"""A nonlinear placement after the affine: how close to each brain voxel's true position (issue 17, a lead).

    cd scripts && OMP_NUM_THREADS=1 python probe_nonlinear_align.py --out ../docs/probe_nonlinear_align.md

bench_align scores the affine estimate against the least-squares affine of a synthetic subject's deformation; the
subject's voxels themselves sit an elastic field away from any affine (3.5 mm RMS). This probe scores placements
against the true MNI position of every brain voxel (``bench_align.synthetic_truth``) for validation subjects:

- the least-squares affine (the best any affine can do),
- ``ldp_med.align.estimate_alignment`` (the shipped affine),
- that affine followed by dipy's SyN (``SymmetricDiffeomorphicRegistration``, ``CCMetric``) against a reference
  *synthesised in the input's contrast*: the template's tissue maps (GM, WM, CSF, its T1) on the model grid,
  combined with the least-squares weights that best explain the input through the affine. Cross-correlation needs
  the same contrast on both sides; the weights give it for T2w, PD and FLAIR as for T1w. The synthetic subjects are
  rendered from these same maps, so this reference flatters them: real scans are the test that matters.

CPU seconds: SyN's alone (the affine's are bench_align's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from bench_align import synthetic_truth
from benchlib import emit, require_validation

from ldp_med.align import _template, estimate_alignment
from ldp_med.data import synthetic

BASIS = ("gm", "wm", "csf", "t1")


def synthesised_reference(static: np.ndarray, s_aff: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The template's tissue maps weighted to look like ``static`` (least squares through ``matrix``), model grid."""
    from dipy.align.imaffine import AffineMap

    ref, ref_aff = _template()
    maps = synthetic.tissue_maps()
    amap = AffineMap(matrix, domain_grid_shape=static.shape, domain_grid2world=s_aff,
                     codomain_grid_shape=ref.shape, codomain_grid2world=ref_aff)
    basis = [maps[n].astype(np.float64) for n in BASIS]
    pulled = np.stack([amap.transform(b) for b in basis] + [np.ones(static.shape)], -1)
    inside = amap.transform(maps["mask"].astype(np.float64)) > 0.1
    coef, *_ = np.linalg.lstsq(pulled[inside], static[inside], rcond=None)
    return np.tensordot(np.stack(basis + [np.ones(ref.shape)], -1), coef, axes=([3], [0]))


def main() -> None:
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10000, 10008)))
    ap.add_argument("--iters", type=int, nargs="+", default=[10, 10, 5], help="SyN iterations per level, coarse first")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    require_validation(args.seeds)
    ref, ref_aff = _template()
    world = np.indices(ref.shape).transpose(1, 2, 3, 0) @ ref_aff[:3, :3].T + ref_aff[:3, 3]  # MNI mm of each voxel
    lines = ["| subject | contrast | least-squares affine (mm) | shipped affine (mm) | + SyN (mm) | SyN CPU s |",
             "|---|---|---|---|---|---|"]
    for seed in args.seeds:
        vol, m_true, brain, y = synthetic_truth(seed)
        x = np.argwhere(brain) @ vol.affine[:3, :3].T + vol.affine[:3, 3]

        def rms(m=None, points=None):
            p = x @ m[:3, :3].T + m[:3, 3] if points is None else points
            return float(np.sqrt(((p - y) ** 2).sum(1).mean()))

        matrix = estimate_alignment(vol).matrix
        c0 = time.process_time()
        static = vol.data.astype(np.float64) / np.percentile(vol.data, 99.5)
        moving = synthesised_reference(static, vol.affine, matrix)
        mapping = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=list(args.iters)).optimize(
            static, moving, static_grid2world=vol.affine, moving_grid2world=ref_aff, prealign=matrix)
        cpu = time.process_time() - c0
        placed = np.stack([mapping.transform(world[..., k], interpolation="linear") for k in range(3)], -1)[brain]
        contrast = synthetic.make_subject(seed)["contrast"]
        lines.append(f"| {seed} | {contrast} | {rms(m_true):.2f} | {rms(matrix):.2f} | {rms(points=placed):.2f} | {cpu:.1f} |")
        print(lines[-1], flush=True)
    emit(lines + ["", f"SyN level_iters {list(args.iters)}, CCMetric(3) defaults, reference basis {', '.join(BASIS)}."],
         args.out)


if __name__ == "__main__":
    main()
