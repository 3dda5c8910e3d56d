"""Synthetic healthy cohort built offline from the MNI152 2009a template that nilearn ships.

Every subject is a deterministic function of an integer seed: the template's tissue maps
(GM, WM, CSF = brain mask - GM - WM) are moved by a smooth random elastic + small affine
deformation (MONAI ``Rand3DElasticd``, all maps together, bilinear), given atrophy-like variation
(probability mass moved from GM/WM to CSF next to CSF: wider sulci and ventricles), rendered with
per-contrast tissue intensities plus some of the template's own texture, multiplied by a smooth
bias field (MONAI ``RandBiasField``) and corrupted with Rician noise.

Model grid: ``GRID`` = 96x112x96 voxels at 2 mm, the 99x117x95 template cropped / padded centrally
(start offsets (1, 2, 0): one voxel cropped at the start of x, two at the start of y, one voxel of
padding at the end of z); ``grid_affine()`` maps each grid voxel centre to the same world
(MNI, mm) position as the template voxel it came from.

Intensity convention: every image is float32 in [0, 1], background ~0 apart from noise.
The T1 template is scaled so that its 99.9th percentile inside the brain mask is 1, then clipped.

Splits are seed ranges: train 0-9999, val 10000-10099, test 20000-20099.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = [
    "GRID",
    "VOXEL_MM",
    "CLASSES",
    "SPLITS",
    "TISSUE_INTENSITIES",
    "CAPTION_TEMPLATES",
    "CONTRAST_SYNONYMS",
    "split_of",
    "seeds",
    "grid_affine",
    "template_volume",
    "tissue_maps",
    "caption_for",
    "caption_pool",
    "subject_meta",
    "make_subject",
    "build_cohort",
    "load_index",
    "load_subject",
]

GRID: tuple[int, int, int] = (96, 112, 96)
VOXEL_MM: float = 2.0
CLASSES: tuple[str, ...] = ("T1w", "T2w", "PD", "FLAIR")
#: split name -> (first seed, last seed), both inclusive.
SPLITS: dict[str, tuple[int, int]] = {"train": (0, 9999), "val": (10000, 10099), "test": (20000, 20099)}

_TEMPLATE_SHAPE = (99, 117, 95)
#: Mean relative tissue intensities (GM, WM, CSF) per contrast; each subject jitters them by U(-0.05, 0.05).
TISSUE_INTENSITIES: dict[str, tuple[float, float, float]] = {
    "T1w": (0.60, 0.85, 0.20),
    "T2w": (0.60, 0.45, 0.95),
    "PD": (0.80, 0.70, 0.75),
    "FLAIR": (0.75, 0.55, 0.08),
}
_JITTER = 0.05
_NOISE_SIGMA = (0.005, 0.015)
_ATROPHY = (0.0, 0.8)  # fraction of the dilation-driven CSF growth applied
_T1_TEMPLATE_MIX = (0.3, 0.6)  # T1w: weight of the real template in the image
_DETAIL_MIX = (0.2, 0.4)  # other contrasts: weight of the template's high-frequency detail

#: Sentence patterns of the captions; ``{c}`` takes a name of the contrast from ``CONTRAST_SYNONYMS``.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "axial {c} brain MRI of a healthy adult",
    "{c} MR scan of a normal brain",
    "healthy adult head MRI, {c}",
    "a {c} magnetic resonance image of a healthy brain",
    "normal {c} brain MRI volume",
    "3D {c} MRI of a healthy human brain",
    "{c} brain scan, no abnormality",
    "{c} image of the head",
    "{c} scan of a healthy volunteer",
    "MRI of the brain, {c} sequence",
    "a {c} head scan",
    "{c}",
    "whole-brain {c} acquisition in a healthy subject",
    "{c} neuroimaging of a normal adult",
)
#: Names of each contrast as people write them: weighting, relaxation physics, sequence names, abbreviations.
CONTRAST_SYNONYMS: dict[str, tuple[str, ...]] = {
    "T1w": ("T1-weighted", "T1w", "T1 weighted", "T1", "spin-lattice relaxation weighted",
            "longitudinal relaxation weighted", "MPRAGE", "MP-RAGE T1", "spoiled gradient echo T1", "SPGR",
            "T1 gradient echo", "anatomical T1"),
    "T2w": ("T2-weighted", "T2w", "T2 weighted", "T2", "spin-spin relaxation weighted",
            "transverse relaxation weighted", "turbo spin echo T2", "fast spin echo T2", "T2 TSE", "T2 FSE"),
    "PD": ("proton density weighted", "PD-weighted", "PD", "proton-density", "proton density", "PDw",
           "spin density weighted", "PD TSE", "proton density fast spin echo"),
    "FLAIR": ("FLAIR", "T2-FLAIR", "fluid-attenuated inversion recovery", "T2 FLAIR", "dark-fluid",
              "fluid-suppressed T2", "dark-fluid inversion recovery", "FLAIR inversion recovery",
              "CSF-suppressed T2"),
}


# ----------------------------------------------------------------------------- splits


def split_of(seed: int) -> str:
    """Return ``"train"``, ``"val"`` or ``"test"`` for ``seed``.

    Raises:
        ValueError: if ``seed`` lies in none of the split ranges.
    """
    s = int(seed)
    for name, (lo, hi) in SPLITS.items():
        if lo <= s <= hi:
            return name
    raise ValueError(f"seed {seed} is in no split; ranges are {SPLITS}")


def seeds(split: str, n: int | None = None) -> list[int]:
    """The first ``n`` seeds of ``split`` (all of them when ``n`` is None).

    Raises:
        ValueError: unknown split, or ``n`` larger than the split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLITS)}")
    lo, hi = SPLITS[split]
    size = hi - lo + 1
    if n is None:
        n = size
    if not 0 <= n <= size:
        raise ValueError(f"split {split!r} has {size} seeds, asked for {n}")
    return list(range(lo, lo + n))


# ----------------------------------------------------------------------------- template


def _crop_starts() -> tuple[int, ...]:
    """Index in the template of grid voxel 0 along each axis (negative = padding)."""
    return tuple((t - g) // 2 for t, g in zip(_TEMPLATE_SHAPE, GRID))


def _to_grid(a: np.ndarray) -> np.ndarray:
    """Centrally crop / zero-pad a template-shaped array to ``GRID``."""
    if a.shape != _TEMPLATE_SHAPE:
        raise ValueError(f"expected template shape {_TEMPLATE_SHAPE}, got {a.shape}")
    out = np.zeros(GRID, dtype=np.float32)
    src, dst = [], []
    for start, g, t in zip(_crop_starts(), GRID, _TEMPLATE_SHAPE):
        s0, s1 = max(start, 0), min(start + g, t)
        src.append(slice(s0, s1))
        dst.append(slice(s0 - start, s1 - start))
    out[tuple(dst)] = a[tuple(src)]
    return out


def grid_affine() -> np.ndarray:
    """The (4, 4) voxel-to-world (MNI mm) affine of ``GRID``, consistent with the template's."""
    a = _grid_maps()[1].copy()  # the 2 mm template's affine
    a[:3, 3] = a[:3, :3] @ np.asarray(_crop_starts(), dtype=np.float64) + a[:3, 3]
    return a


def _mni_maps(resolution: int, place=lambda a: a) -> dict[str, np.ndarray]:
    """nilearn's MNI152 2009a maps at ``resolution`` mm, each ``place``d (e.g. onto ``GRID``): ``t1`` (99.9th
    brain percentile -> 1, clipped), ``gm``, ``wm``, ``csf`` (= mask - GM - WM), ``mask``; float32."""
    from nilearn import datasets

    t1 = np.asarray(datasets.load_mni152_template(resolution=resolution).get_fdata(), dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).get_fdata(), dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution).get_fdata(), dtype=np.float32)
    t1, gm, wm, mask = (place(np.clip(x, 0, None)) for x in (t1, gm, wm, mask))
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.clip(mask - gm - wm, 0, 1)
    p999 = float(np.percentile(t1[mask > 0], 99.9))
    t1 = np.clip(t1 / p999, 0, 1).astype(np.float32)
    return {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "mask": mask}


#: Environment variable naming the folder where the template's maps on ``GRID`` are kept between runs (default
#: ``$XDG_CACHE_HOME/ldp-med``, else ``~/.cache/ldp-med``): nilearn's import and its 1 mm -> 2 mm resampling of four
#: maps take 2-3 s, paid by every aligned reconstruction (``ldp_med.align``'s reference) in a fresh process.
CACHE_ENV = "LDP_MED_CACHE"
_MAP_NAMES = ("t1", "gm", "wm", "csf", "mask")


def _cache_file() -> Path | None:
    """The cache of :func:`_grid_maps`, named by the nilearn version whose files and resampling made it; None where
    no absolute folder can be named (no home: nothing is written into the working folder)."""
    from importlib.metadata import version

    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ldp-med")
    if not os.path.isabs(root):
        return None
    return Path(root) / f"mni152_2009a_{GRID[0]}x{GRID[1]}x{GRID[2]}_nilearn-{version('nilearn')}.npz"


@functools.lru_cache(maxsize=1)
def _grid_maps() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(:func:`_mni_maps` at 2 mm on ``GRID``, read-only; the 2 mm template's affine), from the cache file when it
    holds them whole (:func:`_cache_file`), else from nilearn, then written there (atomically; a cache that cannot be
    read or written is only slower)."""
    path = _cache_file()
    try:
        if path is None:
            raise FileNotFoundError("no cache folder")
        with np.load(path, allow_pickle=False) as f:
            maps, affine = {k: f[k] for k in _MAP_NAMES}, f["affine"]
        if any(m.shape != GRID or m.dtype != np.float32 for m in maps.values()) or affine.shape != (4, 4):
            raise ValueError("stale")
    except Exception:  # missing, truncated, stale or unreadable: made again (a cache never fails the run)
        from nilearn import datasets

        maps = _mni_maps(2, _to_grid)
        affine = np.asarray(datasets.load_mni152_template(resolution=2).affine, dtype=np.float64)
        if path is not None:  # whole or not at all (another process may be reading it); a failed write is skipped
            from ldp_med.errors import InputError
            from ldp_med.io.atomic import atomic_open

            with contextlib.suppress(OSError, InputError):
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_open(path, force=True) as fh:
                    np.savez_compressed(fh, affine=affine, **maps)
    for x in (*maps.values(), affine):
        x.setflags(write=False)
    return maps, affine


def _load_maps() -> dict[str, np.ndarray]:
    return _grid_maps()[0]


def template_volume() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 template on ``GRID``: float32 in [0, 1] (99.9th brain percentile -> 1, clipped), affine."""
    return _load_maps()["t1"].copy(), grid_affine()


def tissue_maps() -> dict[str, np.ndarray]:
    """Template tissue probability maps on ``GRID`` (read-only float32): ``gm``, ``wm``, ``csf``, ``mask``, ``t1``."""
    return dict(_load_maps())


# ----------------------------------------------------------------------------- captions


def caption_for(contrast: str, rng: np.random.Generator) -> str:
    """A caption for a healthy scan of ``contrast``: a random template filled with a random synonym."""
    if contrast not in CONTRAST_SYNONYMS:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {CLASSES}")
    tpl = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    syn = CONTRAST_SYNONYMS[contrast]
    return tpl.format(c=syn[int(rng.integers(len(syn)))])


def caption_pool() -> list[tuple[int, str]]:
    """Every caption the cohort can carry, as (label, caption): each template with each name of each class.

    Captions describe the class only, so a text-conditioned prior draws an image's caption from its
    class's pool (``PriorTrainConfig.caption_within_class``) and sees every wording with every image.
    """
    return [(k, tpl.format(c=syn)) for k, c in enumerate(CLASSES) for tpl in CAPTION_TEMPLATES
            for syn in CONTRAST_SYNONYMS[c]]


# ----------------------------------------------------------------------------- subjects


def subject_meta(seed: int, contrast: str | None = None) -> dict:
    """Label, contrast and caption of subject ``seed`` without rendering it (cheap).

    These are :func:`make_subject`'s first draws (:func:`_first_draws`), so they equal its metadata.
    """
    return _first_draws(seed, contrast)[1] | {"seed": int(seed)}


def _draw_meta(rng: np.random.Generator, contrast: str | None) -> dict:
    drawn = int(rng.integers(len(CLASSES)))  # always drawn so the stream does not depend on `contrast`
    if contrast is not None and contrast not in CLASSES:
        raise ValueError(f"unknown contrast {contrast!r}; expected one of {CLASSES}")
    label = drawn if contrast is None else CLASSES.index(contrast)
    return {"label": label, "contrast": CLASSES[label], "caption": caption_for(CLASSES[label], rng)}


def _deform(stack: np.ndarray, monai_seed: int) -> np.ndarray:
    """Random smooth elastic + small affine deformation of the stacked maps (C, X, Y, Z), bilinear."""
    import torch
    from monai.transforms import Rand3DElastic

    t = Rand3DElastic(
        sigma_range=(7.0, 9.0),  # smoothing of the random field, voxels
        magnitude_range=(150.0, 300.0),  # -> mean displacement ~1-2 voxels, max ~4
        prob=1.0,
        rotate_range=(np.deg2rad(3.0),) * 3,
        scale_range=(0.05,) * 3,
        translate_range=(2.0,) * 3,  # voxels: up to 4 mm
        mode="bilinear",
        padding_mode="zeros",
    )
    t.set_random_state(seed=monai_seed)
    with torch.no_grad():
        out = t(torch.from_numpy(stack))
    return np.asarray(out.cpu().numpy() if hasattr(out, "cpu") else out, dtype=np.float32)


_SHARP_SIGMA = 0.5  # 1 mm voxels: the anti-aliasing Gaussian before sampling the 2 mm grid


@functools.lru_cache(maxsize=1)
def _load_maps_1mm() -> tuple[np.ndarray, np.ndarray]:
    """The template's maps at 1 mm, anti-aliased for 2 mm sampling: (stack (4, X, Y, Z) GM, WM, CSF, T1; affine)."""
    from nilearn import datasets
    from scipy import ndimage

    maps = _mni_maps(1)
    stack = np.stack([ndimage.gaussian_filter(maps[k], _SHARP_SIGMA) for k in ("gm", "wm", "csf", "t1")])
    stack = stack.astype(np.float32)
    stack.setflags(write=False)
    return stack, np.asarray(datasets.load_mni152_template(resolution=1).affine, dtype=np.float64)


def _sample_1mm(src: np.ndarray) -> np.ndarray:
    """The 1 mm maps (:func:`_load_maps_1mm`: GM, WM, CSF, T1) sampled, linearly, at ``src`` (3, X, Y, Z): positions
    in ``GRID``'s voxel coordinates (the 2 mm grid)."""
    from scipy import ndimage

    stack, aff1 = _load_maps_1mm()
    m = np.linalg.inv(aff1) @ grid_affine()
    coords = np.tensordot(m[:3, :3], src, axes=1) + m[:3, 3][:, None, None, None]
    return np.stack([ndimage.map_coordinates(x, coords, order=1, mode="constant", cval=0.0) for x in stack])


def _deform_from_1mm(monai_seed: int) -> np.ndarray:
    """The deformation of :func:`_deform` (same seed, same field: its voxel-index maps are warped), with the maps
    sampled from the 1 mm template instead of interpolated on the 2 mm grid: one interpolation at 1 mm instead of
    one at 2 mm, so the subject keeps the template's 2 mm sharpness rather than a 2 mm linear blur."""
    return _sample_1mm(_deform(np.indices(GRID).astype(np.float32), monai_seed)).astype(np.float32)


def _atrophy(gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, amount: float) -> tuple[np.ndarray, ...]:
    """Move probability mass from GM/WM to CSF next to CSF (wider sulci, larger ventricles)."""
    from scipy import ndimage

    if amount <= 0:
        return gm, wm, csf
    grown = ndimage.gaussian_filter(ndimage.grey_dilation(csf, size=(3, 3, 3)), 0.7)
    tissue = gm + wm
    gain = np.clip(amount * (grown - csf), 0, None)
    gain = np.minimum(gain, tissue)
    frac = np.where(tissue > 1e-6, 1.0 - gain / np.maximum(tissue, 1e-6), 1.0)
    return (gm * frac).astype(np.float32), (wm * frac).astype(np.float32), (csf + gain).astype(np.float32)


#: Synthetic head layers outside the brain, per contrast: (bone, marrow, scalp) intensities (T1: fat bright; FLAIR/T2:
#: fat moderately bright; cortical bone dark in all).
_HEAD_LAYERS = {"T1w": (0.05, 0.35, 0.85), "T2w": (0.04, 0.3, 0.6), "PD": (0.06, 0.4, 0.75), "FLAIR": (0.04, 0.3, 0.65)}


def synthetic_head(clean: np.ndarray, tissue: np.ndarray, contrast: str, seed: int) -> np.ndarray:
    """``clean`` with a skull (inner and outer table, marrow between) and a textured scalp of varying thickness
    drawn around its brain mask (GM + WM + CSF > 0.5) from ``seed`` (its own generator: the subject's draws do not
    move): a head with skull, for tuning (validation seeds, scripts/benchlib.py's ``head:<seed>``) and for training
    (``make_subject(head=True)``, ``data.heads``). Distances in mm on the 2 mm grid."""
    from scipy import ndimage

    rng = np.random.default_rng([seed, 17])
    brain = tissue.sum(0) > 0.5
    dist = ndimage.distance_transform_edt(~brain) * 2.0

    def smooth_field(scale, sigma):  # a smooth random field around 1 (thickness and intensity variation)
        f = ndimage.gaussian_filter(rng.standard_normal(clean.shape), sigma)
        return 1 + scale * f / (f.std() + 1e-8)

    bone, marrow, scalp = (v * rng.uniform(0.85, 1.15) for v in _HEAD_LAYERS[contrast])
    csf_mm, skull_mm, scalp_mm = rng.uniform(1.5, 3.0), rng.uniform(5.0, 8.0), rng.uniform(5.0, 10.0)
    thick = smooth_field(0.25, 6.0)
    inner, outer = csf_mm * thick, (csf_mm + skull_mm) * thick
    top = (csf_mm + skull_mm + scalp_mm) * thick
    depth = np.clip((dist - inner) / np.maximum(outer - inner, 1e-3), 0, 1)  # 0..1 across the skull
    skull = ((dist > inner) & (dist <= outer)).astype(np.float32)
    head = skull * (bone + (marrow - bone) * np.exp(-((depth - 0.5) / 0.15) ** 2))
    layer = ((dist > outer) & (dist <= top)).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(clean.shape), 0.8)
    head = head + layer * scalp * smooth_field(0.15, 3.0) * (1 + 0.08 * texture / texture.std())
    head = ndimage.gaussian_filter(head, 0.6)  # partial volume at the layer edges
    outside = np.clip(dist / 2.0, 0, 1)  # fades in over the first 2 mm outside the brain mask
    return np.clip(clean + outside * head, 0, 1).astype(np.float32)


def _first_draws(seed: int, contrast: str | None) -> tuple[np.random.Generator, dict, int]:
    """The generator of subject ``seed`` after its first draws, the subject's metadata, and the seed of its
    deformation: the draws :func:`make_subject` and :func:`deformation_source` share."""
    rng = np.random.default_rng(int(seed))
    meta = _draw_meta(rng, contrast)
    return rng, meta, int(rng.integers(2**31 - 1))


def deformation_source(seed: int) -> np.ndarray:
    """The template voxel (float index, (3, *GRID) float32) each voxel of subject ``seed`` shows: its own elastic +
    affine deformation, drawn as :func:`make_subject` draws it (the truth of alignment benchmarks and tests)."""
    return _deform(np.indices(GRID).astype(np.float32), _first_draws(seed, None)[2])


def make_subject(
    seed: int, contrast: str | None = None, return_clean: bool = False, return_tissue: bool = False,
    sharp: bool = False, head: bool = False,
) -> dict:
    """Render synthetic healthy subject ``seed`` on ``GRID``.

    Args:
        seed: integer seed; all randomness comes from ``np.random.default_rng(seed)``
            (MONAI transforms are seeded from it).
        contrast: one of ``CLASSES``; drawn uniformly from the seed when None.
        return_clean: also return ``clean``, the image before Rician noise (bias field included).
        return_tissue: also return ``tissue``, the subject's own (deformed, atrophied) tissue
            probability maps, float32 (3, 96, 112, 96) in order GM, WM, CSF.
        sharp: sample the template's maps at 1 mm through the same deformation instead of interpolating the
            2 mm maps (same draws and anatomy; without the 2 mm linear blur, closer to a real 2 mm scan).
        head: the brain inside a synthetic skull and scalp (:func:`synthetic_head`, drawn around the noise-free
            image after its bias field), the Rician noise on the whole head (same draws and brain).

    Returns:
        dict with ``image`` (float32 (96, 112, 96) in [0, 1]), ``label`` (int index into CLASSES),
        ``contrast`` (str), ``caption`` (str), ``affine`` ((4, 4) float64), ``seed`` (int),
        ``noise_sigma`` (float), and ``clean`` / ``tissue`` when asked.
    """
    from scipy import ndimage

    seed = int(seed)
    rng, meta, monai_seed = _first_draws(seed, contrast)
    maps = _load_maps()

    # Spatial variation: all maps move together (monai_seed).
    if sharp:
        gm, wm, csf, t1 = _deform_from_1mm(monai_seed)
    else:
        stack = np.stack([maps["gm"], maps["wm"], maps["csf"], maps["t1"]])
        gm, wm, csf, t1 = _deform(stack, monai_seed)
    gm, wm, csf = (np.clip(x, 0, 1) for x in (gm, wm, csf))
    gm, wm, csf = _atrophy(gm, wm, csf, float(rng.uniform(*_ATROPHY)))

    # Tissue intensities and template texture.
    base = np.asarray(TISSUE_INTENSITIES[meta["contrast"]], dtype=np.float64)
    i_gm, i_wm, i_csf = base + rng.uniform(-_JITTER, _JITTER, size=3)
    img = i_gm * gm + i_wm * wm + i_csf * csf
    if meta["contrast"] == "T1w":
        # Mix in the real template (its tissue contrast rescaled to this subject's WM level).
        alpha = rng.uniform(*_T1_TEMPLATE_MIX)
        img = (1 - alpha) * img + alpha * t1 * (i_wm / 0.87)
    else:
        # Keep a little of the template's high-frequency detail, signed like the WM-GM contrast.
        detail = t1 - ndimage.gaussian_filter(t1, 1.0)
        img = img + rng.uniform(*_DETAIL_MIX) * np.sign(i_wm - i_gm) * detail
    img = np.clip(img, 0, None).astype(np.float32)

    # Smooth multiplicative bias field.
    from monai.transforms import RandBiasField

    bias = RandBiasField(degree=3, coeff_range=(0.0, 0.15), prob=1.0)
    bias.set_random_state(seed=int(rng.integers(2**31 - 1)))
    img = np.asarray(bias(img[None]), dtype=np.float32)[0]
    clean = np.clip(img, 0, 1).astype(np.float32)
    if head:
        img = clean = synthetic_head(clean, np.stack([gm, wm, csf]), meta["contrast"], seed)

    # Rician noise, sigma relative to the [0, 1] range.
    sigma = rng.uniform(*_NOISE_SIGMA)
    n1 = rng.standard_normal(GRID, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(GRID, dtype=np.float32) * np.float32(sigma)
    noisy = np.sqrt((img + n1) ** 2 + n2**2)
    image = np.clip(noisy, 0, 1).astype(np.float32)

    out = {"image": image, **meta, "affine": grid_affine(), "seed": seed, "noise_sigma": float(sigma)}
    if return_clean:
        out["clean"] = clean
    if return_tissue:
        out["tissue"] = np.stack([gm, wm, csf]).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- cohort on disk


def _file_name(seed: int) -> str:
    return f"sub-{int(seed):05d}.npz"


def build_cohort(out_dir: str | os.PathLike, seeds: Iterable[int], progress: bool = True, sharp: bool = False,
                 head: bool = False) -> Path:
    """Render subjects ``seeds`` into ``out_dir`` (one ``sub-XXXXX.npz`` each) and write ``index.json``
    (``sharp``: rendered from the 1 mm template, ``head``: in a synthetic skull and scalp, see :func:`make_subject`;
    keep those in a folder of their own).

    Each npz holds ``image`` (float16 (96, 112, 96); float16 error ~5e-4 is below the noise), ``clean``
    (the image before Rician noise, float16), ``noise_sigma``, ``affine`` and ``label``. Subjects whose file
    already exists with a ``clean`` image are skipped (not re-rendered); older files without one are re-rendered.
    ``index.json`` is a list of {seed, split, label, contrast, caption, file} for every subject
    in ``out_dir`` (earlier entries are kept), sorted by seed. Files are written atomically.

    Returns:
        path of ``index.json``.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    entries = {e["seed"]: e for e in load_index(out)} if index_path.exists() else {}
    todo = [int(s) for s in seeds]
    for s in todo:
        split_of(s)  # fail before rendering anything
    t_total, n_made = 0.0, 0
    for s in tqdm(todo, disable=not progress, desc="synthetic cohort", unit="subj"):
        path = out / _file_name(s)
        if _complete(path):
            meta = subject_meta(s)
        else:
            t0 = time.perf_counter()
            subj = make_subject(s, return_clean=True, sharp=sharp, head=head)
            t_total += time.perf_counter() - t0
            n_made += 1
            meta = {k: subj[k] for k in ("label", "contrast", "caption")}
            tmp = path.with_name(f".{path.name}.tmp.npz")
            np.savez(tmp, image=subj["image"].astype(np.float16), clean=subj["clean"].astype(np.float16),
                     noise_sigma=subj["noise_sigma"], affine=subj["affine"], label=subj["label"])
            os.replace(tmp, path)
        entries[s] = {"seed": s, "split": split_of(s), **meta, "file": path.name}
        if n_made and n_made % 50 == 0:
            _write_index(index_path, entries)
    _write_index(index_path, entries)
    return index_path


def _complete(path: Path) -> bool:
    """Whether the cohort file ``path`` exists and holds every array :func:`build_cohort` writes today."""
    if not path.exists():
        return False
    with np.load(path) as z:
        return "clean" in z.files


def _write_index(path: Path, entries: dict) -> None:
    tmp = path.with_name(f".index.json.{os.getpid()}.tmp")  # builders running side by side each write their own
    tmp.write_text(json.dumps([entries[k] for k in sorted(entries)], indent=1))
    os.replace(tmp, path)


def load_index(out_dir: str | os.PathLike) -> list[dict]:
    """The entries of ``out_dir/index.json`` (see ``build_cohort``)."""
    return json.loads((Path(out_dir) / "index.json").read_text())


def load_subject(out_dir: str | os.PathLike, entry: dict | int, clean: bool = False):
    """The float32 (96, 112, 96) image of a cohort entry (or seed) written by ``build_cohort``; with ``clean``
    the pair (image, noise-free image) and the noise sigma: ``(image, clean, sigma)``."""
    name = _file_name(entry) if isinstance(entry, (int, np.integer)) else entry["file"]
    with np.load(Path(out_dir) / name) as z:
        image = z["image"].astype(np.float32)
        if not clean:
            return image
        return image, z["clean"].astype(np.float32), float(z["noise_sigma"])
