"""Alignment of an input volume to the model space: an affine estimated with dipy, by mutual information.

The model space is the MNI152 world (mm) that the synthetic training cohort lives in; its reference
image is the MNI152 T1 template on the model grid (:func:`ldp_med.data.synthetic.template_volume`,
skull-stripped, 2 mm). :func:`estimate_alignment` returns ``M``, a (4, 4) world-to-world matrix: input
world mm (RAS+) -> model / MNI world mm. The model grid's voxel-to-world affine in the input's world
is then ``inv(M) @ model_affine_mni`` (see :meth:`ldp_med.space.SpaceMap.for_volume`).

How (all the registration is ``dipy.align.imaffine``; nothing here is a hand-written optimiser):

1. The input is the *static* image and the template the *moving* one, so the metric is sampled only
   where the input has data: a partial field of view is compared with the part of the template it
   covers, never with zeros outside it (dipy's masks need dense sampling; this needs none). The
   input is cropped to its foreground box (plus ``margin_mm``) and resampled, along its own voxel axes,
   to ``work_mm`` isotropic voxels (anti-aliased where it is finer): 1 mm, anisotropic and LPS inputs
   all become one small grid, in the input's own world coordinates.
2. Start: centres of mass (foreground-weighted), then a coarse search by the metric alone over a grid of
   translations, then rotations, then finer translations (:func:`_search_starts`; the input and the template
   both reduced to the search level): a cropped field of view's centre of mass is far from the template's, and a
   small part of a brain has many local optima.
3. ``MutualInformationMetric`` (Mattes, ``nbins`` bins, a ``sampling`` fraction of the voxels per level)
   with ``AffineRegistration`` (L-BFGS-B) through ``TranslationTransform3D`` -> ``RigidTransform3D`` ->
   ``AffineTransform3D`` (each started from the previous), on a pyramid of ``factors`` times ``work_mm``
   (8 / 4 mm for the first two, 8 / 4 / 2 mm for the affine by default; a level is dropped when the
   input is too small for it). dipy's finest level is always the grid it is given, so a stage whose
   finest factor is k gets the input smoothed and taken on every k-th voxel (:func:`_reduced`). Mutual
   information makes no assumption on the contrast: T2w, PD and FLAIR align to the T1 template.

4. The affine part of a nonlinear placement (:func:`_affine_of_placement`): no affine follows a brain's own shape,
   and mutual information settles where the mismatch costs it least, not where the brain sits on average. So after
   the affine, dipy's SyN (``SymmetricDiffeomorphicRegistration``, ``CCMetric``) places every voxel, on the working
   grid reduced to ``refine_mm``, against a reference *synthesised in the input's contrast* (the template's
   GM / WM / CSF / T1 maps weighted by least squares to look like the input through the affine: cross-correlation
   needs one contrast on both sides), and the result is the least-squares affine of that placement over the brain
   (the input's voxels that land in the template's brain mask). Brains only: a head's skull and scalp have nothing to
   match in the brain's maps (``refine_max_outside``; on the NLin6Asym head the step grew the placement's scale
   from 1.5% to 3% and cut its scalp off the model grid). Validation subjects: 0.36-1.13 mm from the
   least-squares affine of their true deformation, against 0.98-1.98 mm for the mutual-information affine, in
   ~2 s (docs/results_align.md, "Session 40").

When the foreground is narrower than ``min_extent_mm`` along some axis (a slab or a small part of a
brain), shears and per-axis scales are not determined by the data: the last stage is then
``RigidIsoScalingTransform3D`` (rigid + one scale) instead of the 12-parameter affine, and there is no
nonlinear step; ``affine=False`` asks for that always. Deterministic: dipy's sample points are a regular grid,
no random draws.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ldp_med.errors import InputError
from ldp_med.io.volume import Volume, check_affine, check_volume_array
from ldp_med.space import foreground

__all__ = ["Alignment", "AlignConfig", "reference_volume", "estimate_alignment", "placement_rms", "lstsq_affine",
           "contrast_matched_reference"]


@dataclass(frozen=True)
class AlignConfig:
    """Settings of :func:`estimate_alignment` (the defaults are the measured ones, docs/results_align.md).

    Attributes:
        work_mm: isotropic voxel size (mm) of the input's working grid (the finest level).
        margin_mm: margin kept around the input's foreground box.
        nbins: histogram bins of the mutual information.
        sampling: fraction of the working grid's voxels the metric samples at each level.
        translation_factors / rigid_factors / affine_factors: pyramid levels of each stage, as
            multiples of ``work_mm`` (coarse to fine); the Gaussian sigma of a level is
            ``smoothing * (factor - 1)`` working voxels (1.0: dipy's default 3 / 1 / 0 for 4 / 2 / 1).
        iterations: L-BFGS-B iterations per level (the same for every stage).
        search_mm / search_range_mm / search_deg / search_range_deg / search_voxels / search_branches: the start
            search (see :func:`_search_starts`; ``search_mm = 0`` turns it off).
        starts: how many of the best distinct starts go through the translation and rigid stages
            (the best rigid fit goes on to the last stage).
        min_level_voxels: a pyramid level is used only if it keeps this many voxels along every axis.
        affine: end with the 12-parameter affine (else rigid + isotropic scale).
        min_extent_mm: end with rigid + isotropic scale when the foreground is narrower than this along an axis.
        refine_iters: SyN iterations per level (coarse first) of the nonlinear placement whose least-squares
            affine ends a 12-parameter estimate with the default reference; empty: no such step.
        refine_mm: the nonlinear placement runs on the working grid reduced to about this voxel size (never finer
            than the working grid).
        refine_min_voxels: the least-squares affine needs this many brain voxels, else the affine stays.
        refine_max_outside: no nonlinear step when more than this fraction of the input's foreground lies outside the
            template's brain through the affine (a head with skull and scalp: the NLin6Asym head 0.45, the pydeface
            head 0.16, synthetic heads with a neck 0.12; brains 0.00-0.06).
    """

    work_mm: float = 2.0
    margin_mm: float = 8.0
    nbins: int = 32
    sampling: float = 0.3
    translation_factors: tuple[int, ...] = (4, 2)
    rigid_factors: tuple[int, ...] = (4, 2)
    affine_factors: tuple[int, ...] = (4, 2, 1)
    iterations: int = 60
    smoothing: float = 1.0
    search_mm: float = 10.0
    search_range_mm: float = 30.0
    search_deg: float = 10.0
    search_range_deg: float = 20.0
    search_voxels: int = 12
    search_branches: int = 4
    min_level_voxels: int = 8
    starts: int = 1
    affine: bool = True
    min_extent_mm: float = 60.0
    refine_iters: tuple[int, ...] = (10, 10)
    refine_mm: float = 4.0
    refine_min_voxels: int = 500
    refine_max_outside: float = 0.1


@dataclass
class Alignment:
    """An estimated placement of one input in the model space.

    Attributes:
        matrix: float64 (4, 4), input world mm (RAS+) -> model / MNI world mm.
        metric: mutual information (nats) between the input and the template at the end (higher is better).
        seconds: wall-clock seconds of the estimate.
        cpu_seconds: process CPU seconds of the estimate.
        stages: the transform stages that ran, e.g. ("translation", "rigid", "affine").
        start: the matrix the optimisation started from (centres of mass and translation search).
    """

    matrix: np.ndarray
    metric: float
    seconds: float
    cpu_seconds: float
    stages: tuple[str, ...] = ()
    start: np.ndarray = field(default_factory=lambda: np.eye(4))

    def to_meta(self) -> dict:
        """JSON-friendly summary (for output metadata and reports)."""
        return {"align_matrix": np.round(self.matrix, 6).tolist(), "align_metric": round(float(self.metric), 6),
                "align_seconds": round(float(self.seconds), 3), "align_stages": list(self.stages)}


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    from ldp_med.data.synthetic import template_volume

    data, affine = template_volume()
    data.setflags(write=False)
    return data, affine


def reference_volume() -> Volume:
    """The model space's reference image: the MNI152 T1 template on the model grid (float32 [0, 1], MNI affine)."""
    data, affine = _template()
    return Volume(data.copy(), affine.copy(), {"source": "MNI152 2009a template on the model grid"})


# ----------------------------------------------------------------------------- input preparation


def _working_grid(data: np.ndarray, affine: np.ndarray, cfg: AlignConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop to the foreground box (+ margin) and resample along the input's axes to ``work_mm`` voxels.

    Returns:
        (image float64 (X', Y', Z') scaled to [0, 1] on its robust range, its voxel-to-world affine,
        foreground weights for the centre of mass).
    """
    from scipy import ndimage

    vox = np.linalg.norm(affine[:3, :3], axis=0)
    fg = foreground(data)
    if fg.any():
        idx = np.nonzero(fg)
        m = np.ceil(cfg.margin_mm / vox).astype(int)
        lo = np.maximum(np.array([i.min() for i in idx]) - m, 0)
        hi = np.minimum(np.array([i.max() for i in idx]) + m + 1, data.shape)
    else:
        lo, hi = np.zeros(3, int), np.array(data.shape)
    crop = data[tuple(slice(a, b) for a, b in zip(lo, hi))].astype(np.float32)
    a = affine.copy()
    a[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]

    # anti-alias axes finer than the working voxel, then sample the working grid (same field of view)
    step = cfg.work_mm / vox  # input voxels per working voxel along each axis
    sigma = np.where(step > 1, 0.4 * step, 0.0)
    if (sigma > 0).any():
        crop = ndimage.gaussian_filter(crop, sigma, mode="nearest")
    extent = (np.array(crop.shape) - 1) * vox  # mm between the first and last voxel centres
    shape = np.maximum(np.floor(extent / cfg.work_mm).astype(int) + 1, 2)
    coords = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, step)], indexing="ij", sparse=True)
    coords = [np.broadcast_to(c, tuple(shape)) for c in coords]
    work = ndimage.map_coordinates(crop, coords, order=1, mode="nearest").astype(np.float64)
    a_work = a.copy()
    a_work[:3, :3] = a[:3, :3] * step  # columns scaled: voxel size work_mm along the input's own axes

    lo_v, hi_v = np.percentile(work, [0.5, 99.5])
    work = np.clip((work - lo_v) / max(hi_v - lo_v, 1e-12), 0, 1)
    return work, a_work, work * foreground(work)


# ----------------------------------------------------------------------------- estimation


def estimate_alignment(volume: Volume, cfg: AlignConfig | None = None, reference: Volume | None = None) -> Alignment:
    """Estimate the affine from ``volume``'s world to the model (MNI) world by mutual information.

    Args:
        volume: data float32 (X, Y, Z), RAS+ voxel-to-world affine (any voxel sizes or order); any contrast.
        cfg: settings (default :class:`AlignConfig`).
        reference: the model space's reference image (default :func:`reference_volume`).

    Returns:
        an :class:`Alignment`; ``matrix`` maps input world mm -> MNI world mm.

    Raises:
        InputError: non-finite or constant data, or a singular affine (naming ``volume.meta["source"]``).
    """
    from dipy.align.imaffine import AffineRegistration, MutualInformationMetric, transform_centers_of_mass
    from dipy.align.transforms import (AffineTransform3D, RigidIsoScalingTransform3D, RigidTransform3D,
                                       TranslationTransform3D)

    cfg = cfg or AlignConfig()
    t0, c0 = time.perf_counter(), time.process_time()
    source = volume.meta.get("source")
    data = check_volume_array(volume.data, source)
    affine = check_affine(volume.affine, source)
    if not np.isfinite(data).all():
        raise InputError(source, "NaN or Inf values; cannot align to the model space")
    if float(data.max()) == float(data.min()):
        raise InputError(source, "constant intensity; cannot align to the model space")
    if reference is None:
        ref, ref_affine = _template()
    else:
        ref, ref_affine = np.asarray(reference.data, np.float64), np.asarray(reference.affine, np.float64)

    static, s_aff, weights = _working_grid(data, affine, cfg)
    moving = np.asarray(ref, np.float64)
    extent = np.array(static.shape) * cfg.work_mm
    use_affine = cfg.affine and bool((extent >= cfg.min_extent_mm).all())

    start = transform_centers_of_mass(weights, s_aff, moving, ref_affine).affine  # static world -> moving world
    starts = _search_starts(static, s_aff, moving, ref_affine, start, cfg)

    metric = MutualInformationMetric(nbins=cfg.nbins, sampling_proportion=cfg.sampling)
    last = (("affine", AffineTransform3D(), cfg.affine_factors) if use_affine else
            ("rigid+scale", RigidIsoScalingTransform3D(), cfg.affine_factors))
    stages = [("translation", TranslationTransform3D(), cfg.translation_factors),
              ("rigid", RigidTransform3D(), cfg.rigid_factors), last]
    stages = [(n, t, _levels(f, static.shape, cfg)) for n, t, f in stages]

    # a stage of finest factor k: dipy's sigma for that factor, every k-th voxel (once per factor, not per run)
    reduced = functools.cache(lambda k: _reduced(static, s_aff, k, cfg.smoothing * (k - 1)))

    def run(stage, matrix):
        _, transform, factors = stage
        # dipy's finest level is always the grid it is given: reduce the input to the finest factor first,
        # unless that leaves a small input (a part of a brain) under 2 x min_level_voxels along some axis
        k = min(factors) if min(static.shape) // min(factors) >= 2 * cfg.min_level_voxels else 1
        factors = tuple(f // k for f in factors)
        img, aff = reduced(k)
        reg = AffineRegistration(metric=metric, level_iters=[cfg.iterations] * len(factors),
                                 factors=list(factors), sigmas=[cfg.smoothing * (f - 1) for f in factors],
                                 verbosity=0)
        amap, _, fopt = reg.optimize(img, moving, transform, None, static_grid2world=aff,
                                     moving_grid2world=ref_affine, starting_affine=matrix, ret_metric=True)
        return amap.affine, fopt

    # each start through translation and rigid; the best rigid fit (same samples, same level) goes on
    best = None
    for s0 in starts:
        m, _ = run(stages[0], s0)
        m, f = run(stages[1], m)
        if best is None or f < best[1]:
            best = (m, f, s0)
    current, fopt = run(stages[2], best[0])
    start = best[2]
    names = tuple(s[0] for s in stages)
    if use_affine and reference is None and cfg.refine_iters:
        k = max(1, int(round(cfg.refine_mm / cfg.work_mm)))
        fitted = _affine_of_placement(*_reduced(static, s_aff, k, k / 2 if k > 1 else 0.0), current, cfg)
        if fitted is not None:
            current, names = fitted, names + ("nonlinear fit",)
    return Alignment(matrix=np.asarray(current, np.float64), metric=-float(fopt),
                     seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                     stages=names, start=np.asarray(start, np.float64))


def _affine_of_placement(static: np.ndarray, s_aff: np.ndarray, matrix: np.ndarray, cfg: AlignConfig) -> np.ndarray | None:
    """The least-squares affine (input world -> MNI world) of SyN's placement of ``static``'s brain voxels, started
    from ``matrix``; None when fewer than ``cfg.refine_min_voxels`` voxels land in the template's brain, or when the
    input is a head (more than ``cfg.refine_max_outside`` of its foreground outside the template's brain)."""
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    from ldp_med.data.synthetic import tissue_maps

    ref, ref_aff = _template()
    mask = np.asarray(tissue_maps()["mask"], np.float64)
    moving, inside = contrast_matched_reference(static, s_aff, matrix)
    fg = foreground(static)
    if inside.sum() < cfg.refine_min_voxels or (fg & ~inside).sum() > cfg.refine_max_outside * fg.sum():
        return None  # too little brain, or a head: its skull and scalp have nothing to match in the brain's maps
    dipy_log = logging.getLogger("dipy")  # SyN reports every level at INFO: not for a user's terminal
    level = dipy_log.level
    dipy_log.setLevel(max(level, logging.WARNING))
    try:
        mapping = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=list(cfg.refine_iters)).optimize(
            static, moving, static_grid2world=s_aff, moving_grid2world=ref_aff, prealign=matrix)
    finally:
        dipy_log.setLevel(level)
    # where each input voxel lands in MNI mm, and which land in the template's brain
    world = np.indices(ref.shape, dtype=np.float64).transpose(1, 2, 3, 0) @ ref_aff[:3, :3].T + ref_aff[:3, 3]
    brain = mapping.transform(mask, interpolation="linear") > 0.5
    if brain.sum() < cfg.refine_min_voxels:
        return None
    landed = np.stack([mapping.transform(world[..., a], interpolation="linear")[brain] for a in range(3)], -1)
    return lstsq_affine(np.argwhere(brain) @ s_aff[:3, :3].T + s_aff[:3, 3], landed)


def contrast_matched_reference(static: np.ndarray, s_aff: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The template's GM / WM / CSF / T1 maps (and a constant) weighted by least squares to look like ``static``
    through ``matrix`` (input world -> MNI world), on the model grid; and the mask of ``static``'s voxels inside the
    template's brain through ``matrix``, where the weights were fitted."""
    from dipy.align.imaffine import AffineMap

    from ldp_med.data.synthetic import tissue_maps

    ref, ref_aff = _template()
    maps = tissue_maps()
    pull = AffineMap(matrix, domain_grid_shape=static.shape, domain_grid2world=s_aff,
                     codomain_grid_shape=ref.shape, codomain_grid2world=ref_aff).transform
    basis = [np.asarray(maps[n], np.float64) for n in ("gm", "wm", "csf", "t1")] + [np.ones(ref.shape)]
    inside = pull(np.asarray(maps["mask"], np.float64)) > 0.1
    pulled = np.stack([pull(b) for b in basis[:-1]] + [np.ones(static.shape)], -1)
    weights, *_ = np.linalg.lstsq(pulled[inside], static[inside], rcond=None)
    return np.tensordot(np.stack(basis, -1), weights, axes=([3], [0])), inside


def lstsq_affine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The (4, 4) affine that maps points ``x`` (N, 3) closest to ``y`` (N, 3) in least squares."""
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)
    m = np.eye(4)
    m[:3] = coef.T
    return m


def _reduced(image: np.ndarray, affine: np.ndarray, k: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` after a Gaussian of ``sigma`` voxels (none at 0), taken on every ``k``-th voxel, and its
    voxel-to-world affine (the same world positions)."""
    if sigma > 0:
        from scipy import ndimage

        image = ndimage.gaussian_filter(image, sigma)
    if k == 1:
        return image, affine
    affine = affine.copy()
    affine[:3, :3] = affine[:3, :3] * k
    return image[::k, ::k, ::k], affine


def _levels(factors: tuple[int, ...], shape, cfg: AlignConfig) -> tuple[int, ...]:
    """``factors`` whose level keeps at least ``cfg.min_level_voxels`` voxels along every axis (always one)."""
    kept = tuple(f for f in factors if min(shape) / f >= cfg.min_level_voxels)
    return kept or (min(factors),)


def _search_starts(static, s_aff, moving, m_aff, start, cfg: AlignConfig) -> list[np.ndarray]:
    """The ``cfg.starts`` best distinct starts by the metric alone on a grid of translations, then of
    rotations, at a coarse level (best first; ``[start]`` when the search is off).

    The grid: translations of ``search_mm`` steps up to ``search_range_mm`` along each axis; then, for each
    of the ``search_branches`` best distinct translations, rotations of ``search_deg`` steps up to
    ``search_range_deg`` about each axis (through the centre of the input) and translations again at half
    the step around the best rotation. The best translation without rotation can be the wrong one when the
    input is tilted (a rotated part of a brain: nibabel's part at 1 mm, 15 degrees, started 47 mm off with
    one branch). Evaluated on the coarsest level that keeps ``search_voxels`` voxels along every axis.
    """
    if cfg.search_mm <= 0:
        return [start]
    from dipy.align.imaffine import MutualInformationMetric
    from dipy.align.transforms import RigidTransform3D

    f = max([1] + [f for f in (4, 2) if min(static.shape) / f >= cfg.search_voxels])
    sm, a = _reduced(static, s_aff, f, f / 2 if f > 1 else 0.0)
    # the template at the same level: smoothed alike, and on every k-th voxel (dipy copies the moving image on
    # every evaluation: the whole 2 mm template cost more than the metric itself)
    m_vox = float(np.linalg.norm(m_aff[:3, 0]))
    mv, m_aff = _reduced(moving, m_aff, max(1, int(f * cfg.work_mm / m_vox)), f / 2 * cfg.work_mm / m_vox)
    metric = MutualInformationMetric(nbins=cfg.nbins, sampling_proportion=None)
    transform = RigidTransform3D()
    metric.setup(transform, sm, mv, static_grid2world=a, moving_grid2world=m_aff, starting_affine=start)
    centre = (start @ a @ np.r_[(np.array(sm.shape) - 1) / 2, 1.0])[:3]  # the input's centre, moving world

    seen: list[tuple[float, np.ndarray, np.ndarray]] = []  # (cost, rotation, shift) of every start tried

    def cost(rot, shift):
        r = transform.param_to_matrix(np.r_[rot, 0.0, 0.0, 0.0])[:3, :3]
        c = metric.distance(np.r_[rot, np.asarray(shift) + centre - r @ centre])
        seen.append((c, np.asarray(rot, float), np.asarray(shift, float)))
        return c

    def grid(step, reach):
        n = int(reach // step)
        v = np.arange(-n, n + 1) * step
        return np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(-1, 3)

    def distinct(entries, n):
        picked: list[tuple[np.ndarray, np.ndarray]] = []
        for _, r_, t_ in sorted(entries, key=lambda e: e[0]):
            if all(np.linalg.norm(t_ - t2) >= cfg.search_mm or np.abs(r_ - r2).max() >= np.deg2rad(cfg.search_deg) - 1e-9
                   for r2, t2 in picked):
                picked.append((r_, t_))
            if len(picked) == n:
                break
        return picked

    for d in grid(cfg.search_mm, cfg.search_range_mm):
        cost(np.zeros(3), d)
    for _, shift in distinct(seen, cfg.search_branches):  # each of the best shifts gets the rotation grid
        n0 = len(seen)
        for d in np.deg2rad(grid(cfg.search_deg, cfg.search_range_deg)):
            cost(d, shift)
        rot = min(seen[n0:], key=lambda e: e[0])[1]
        for d in grid(cfg.search_mm / 2, cfg.search_mm):
            cost(rot, shift + d)

    picked = distinct(seen, cfg.starts)
    out = []
    for r_, t_ in picked:
        m = transform.param_to_matrix(np.r_[r_, 0.0, 0.0, 0.0])
        m[:3, 3] = t_ + centre - m[:3, :3] @ centre
        out.append(m @ start)
    return out


def placement_rms(m_est: np.ndarray, m_true: np.ndarray, points: np.ndarray) -> float:
    """RMS distance (mm) between ``m_est`` and ``m_true`` applied to ``points`` (N, 3) in the input's world."""
    p = np.c_[np.asarray(points, np.float64), np.ones(len(points))]
    d = (p @ np.asarray(m_est, np.float64).T - p @ np.asarray(m_true, np.float64).T)[:, :3]
    return float(np.sqrt((d**2).sum(1).mean()))
