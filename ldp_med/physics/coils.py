"""Coil sensitivity maps: simulated birdcage coils (sigpy's model) and ESPIRiT estimates (sigpy).

Maps are ``np.ndarray`` complex64 of shape ``(C, X, Y, Z)`` on the same grid as the image; add a
leading batch axis (``maps[None]``) and convert with ``torch.from_numpy`` for ``MRIOperator``.
"""

from __future__ import annotations

import numpy as np

from ldp_med.errors import require


#: Voxels (coils x grid) of the 4-D slab :func:`birdcage_maps` evaluates at once (float64 temporaries of ~130 MB).
_BIRDCAGE_SLAB = 2**24


def birdcage_maps(
    n_coils: int,
    shape_xyz,
    object_mask: np.ndarray | None = None,
    r: float = 1.5,
) -> np.ndarray:
    """Simulated birdcage-coil sensitivities (the model of ``sigpy.mri.birdcage_maps``), RSS-normalised.

    sigpy places up to 8 coils per ring on a circle of relative radius ``r`` (1 = the half-width of
    the field of view) in the (Y, Z) plane, i.e. around the two phase-encode axes so that coil
    encoding helps where k-space is undersampled; further rings are stacked along X. Each coil has
    a ``1 / distance`` magnitude and a rotating phase. With ``r = 1.5`` the coils sit just outside
    the FOV corners and a single coil's normalised magnitude varies smoothly by about 3.5x inside
    the sphere inscribed in the FOV (~20x between FOV corners), a realistic head-array profile;
    smaller ``r`` gives sharper, surface-coil-like profiles, larger ``r`` flatter ones.

    sigpy's formula is evaluated here a slab of X planes at a time (:func:`_birdcage_slab`; equal to sigpy's own
    maps to complex64 precision, tested): sigpy's call holds a dozen float64 arrays of the whole ``(C, X, Y, Z)``
    grid at once, 10.4 GB and 40 s for 8 coils on a 1 mm head (197x233x189), which made ``ldp-med simulate`` of a
    1 mm scan need 10 GB; slab by slab it is the output and ~0.5 GB beside it.

    The maps are normalised so that ``sum_c |S_c|^2 = 1`` at every voxel of the grid (which includes
    the object), so ``A^H A`` of a fully sampled multi-coil ``MRIOperator`` is the identity. If
    ``object_mask`` is given the maps are then set to zero outside it (as estimated maps are), and
    the normalisation holds over the object only.

    Args:
        n_coils: number of coils C >= 1.
        shape_xyz: image grid ``(X, Y, Z)``.
        object_mask: optional boolean ``(X, Y, Z)`` support of the object.
        r: relative radius of the coil ring.

    Returns:
        ``(C, X, Y, Z)`` complex64.

    Raises:
        ValueError: invalid arguments.
    """
    shape = tuple(int(s) for s in shape_xyz)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape_xyz must be three positive ints; got {shape_xyz}")
    if int(n_coils) < 1:
        raise ValueError(f"n_coils must be >= 1; got {n_coils}")
    if not r > 0:
        raise ValueError(f"r must be > 0; got {r}")
    if object_mask is not None:
        object_mask = np.asarray(object_mask) != 0
        if object_mask.shape != shape:
            raise ValueError(f"object_mask shape {object_mask.shape} does not match the grid {shape}")
    n_coils = int(n_coils)
    maps = np.empty((n_coils, *shape), np.complex64)
    step = max(1, _BIRDCAGE_SLAB // (n_coils * shape[1] * shape[2]))
    for lo in range(0, shape[0], step):
        hi = min(lo + step, shape[0])
        slab = _birdcage_slab(n_coils, shape, float(r), lo, hi)
        if object_mask is not None:
            slab *= object_mask[lo:hi]
        maps[:, lo:hi] = slab
    return maps


def _birdcage_slab(n_coils: int, shape: tuple[int, int, int], r: float, lo: int, hi: int,
                   per_ring: int = 8) -> np.ndarray:
    """X planes ``lo:hi`` of the birdcage maps, complex128 ``(C, hi - lo, Y, Z)``, normalised so that ``sum_c |S_c|^2
    = 1`` at every voxel: ``sigpy.mri.birdcage_maps((C, X, Y, Z), r)``'s 4-D formula (sigpy's axes ``(nc, nz, ny,
    nx)`` are ours), ``per_ring`` coils per ring (sigpy's ``nzz``), in float64."""
    nx_, ny_, nz_ = shape  # our (X, Y, Z): sigpy's (nz, ny, nx)
    c = np.arange(n_coils, dtype=np.float64)[:, None, None, None]
    ring = np.floor(c / per_ring)
    coil_a = r * np.cos(c * (2 * np.pi / per_ring))  # sigpy's coilx: along our Z
    coil_b = r * np.sin(c * (2 * np.pi / per_ring))  # sigpy's coily: along our Y
    coil_x = ring - 0.5 * (np.ceil(n_coils / per_ring) - 1)  # sigpy's coilz: rings along our X
    phase_offset = -(c + ring) * (2 * np.pi / per_ring)
    a = (np.arange(nz_)[None, None, None, :] - nz_ / 2.0) / (nz_ / 2.0) - coil_a
    b = (np.arange(ny_)[None, None, :, None] - ny_ / 2.0) / (ny_ / 2.0) - coil_b
    x = (np.arange(lo, hi)[None, :, None, None] - nx_ / 2.0) / (nx_ / 2.0) - coil_x
    phase = np.exp(1j * (np.arctan2(a, -b) + phase_offset))  # (C, 1, Y, Z): the same on every X plane
    inverse = 1.0 / np.sqrt(a * a + b * b + x * x)  # (C, hi - lo, Y, Z)
    inverse /= np.sqrt((inverse * inverse).sum(axis=0, keepdims=True))
    return inverse * phase


#: Grids above this many voxels get their ESPIRiT maps on a coarser grid (:func:`espirit_grid`): a 2 mm head's
#: 99x117x95 on 33x39x31 in 4 s instead of 112 s on the whole grid, the same reconstructions (validation, prior and
#: CS, R=4 and R=8: -0.06 to +0.02 dB; docs/results.md, "ESPIRiT on a coarser grid", session 54). 1.31 M (2 mm heads
#: whole) until then.
ESPIRIT_MAX_VOXELS = 65_536


def espirit_grid(shape: tuple[int, ...], calib: int = 12, max_voxels: int | None = ESPIRIT_MAX_VOXELS) -> tuple[int, ...]:
    """The grid ESPIRiT runs on for k-space of ``shape``: every axis divided by the smallest integer factor that
    brings the voxel count to ``max_voxels`` or below, no axis under ``calib`` (None: ``shape`` itself)."""
    factor = 1
    while max_voxels and np.prod([max(calib, n // factor) for n in shape]) > max_voxels and factor < max(shape):
        factor += 1
    return tuple(max(calib, n // factor) for n in shape)


def espirit_maps(
    kspace,
    calib: int = 12,
    thresh: float = 0.02,
    kernel_width: int = 6,
    crop: float = 0.0,
    max_iter: int = 100,
    max_voxels: int | None = ESPIRIT_MAX_VOXELS,
    progress: bool = False,
) -> np.ndarray:
    """Estimate sensitivity maps with ESPIRiT (``sigpy.mri.app.EspiritCalib``, one set of maps).

    The calibration region is the centred ``calib`` cube of k-space: the readout X is fully
    sampled, so ``calib`` applies to all three axes; the (Y, Z) centre must be fully sampled (e.g.
    the calibration square of :func:`ldp_med.physics.masks.poisson_mask` with the same ``calib``).
    The maps are normalised by ESPIRiT to ``sum_c |S_c|^2 = 1`` wherever they are kept, with the
    phase referenced to coil 0.

    ``crop`` zeroes the maps where the ESPIRiT eigenvalue (about 1 where the coil signal is
    consistent with the calibration, lower in noise-only background) is below it. The default 0 keeps
    unit-norm maps everywhere, so no voxel with signal can be put in the null space of ``A`` by a bad
    threshold (low-SNR tissue, a small or noisy calibration region); the price is that the
    data-consistency step reproduces the measured noise in the background instead of leaving it to
    the prior. On a 32^3 Shepp-Logan with 8 birdcage coils the object eigenvalue stayed above 0.96
    and the background median was about 0.5-0.6, so ``crop=0.8-0.95`` gives background-free maps on
    clean data; choose it deliberately when that is wanted.

    Args:
        kspace: ``(C, X, Y, Z)`` complex k-space (np.ndarray or torch tensor), centred convention
            (DC at ``n // 2``), undersampled entries zero.
        calib: calibration width (<= every grid size, > ``kernel_width``).
        thresh: singular-value threshold of the calibration matrix, relative to the largest.
        kernel_width: ESPIRiT kernel width.
        crop: eigenvalue threshold in [0, 1) below which maps are set to zero.
        max_iter: power-iteration count.
        max_voxels: on a larger grid (1 mm heads) the maps are estimated on a coarser grid of the same field of
            view (k-space cropped around its centre, every axis by one integer factor, never below ``calib``) and
            interpolated trilinearly back: ESPIRiT holds a C x C matrix per voxel, and maps are smooth (their
            k-space support is the kernel's). None: always the full grid.
        progress: sigpy's progress bar over the power iterations.

    Returns:
        ``(C, X, Y, Z)`` complex64 maps.

    Raises:
        MissingDependencyError: sigpy (the eval extra) is not installed or does not import.
        ValueError: bad shape or parameters.
    """
    if hasattr(kspace, "detach"):  # torch tensor
        kspace = kspace.detach().cpu().numpy()
    ksp = np.asarray(kspace)
    if ksp.ndim != 4 or not np.iscomplexobj(ksp):
        raise ValueError(f"kspace must be complex with shape (C, X, Y, Z); got {ksp.dtype} {ksp.shape}")
    if not np.isfinite(ksp).all():
        raise ValueError("kspace contains non-finite values")
    calib, kernel_width = int(calib), int(kernel_width)
    if not 0 < kernel_width < calib <= min(ksp.shape[1:]):
        raise ValueError(
            f"need 0 < kernel_width < calib <= min(X, Y, Z); got kernel_width={kernel_width}, calib={calib}, "
            f"grid {ksp.shape[1:]}"
        )
    if not 0 <= crop < 1:
        raise ValueError(f"crop must be in [0, 1); got {crop}")
    EspiritCalib = require("sigpy.mri.app", feature="ESPIRiT coil maps").EspiritCalib

    full = ksp.shape[1:]
    coarse = espirit_grid(full, calib, max_voxels)
    lo = [n // 2 - m // 2 for n, m in zip(full, coarse)]
    ksp = ksp[:, lo[0]:lo[0] + coarse[0], lo[1]:lo[1] + coarse[1], lo[2]:lo[2] + coarse[2]]
    ksp = np.ascontiguousarray(ksp, dtype=np.complex64)  # complex64 halves the (X*Y*Z, C, C) covariance
    maps = EspiritCalib(
        ksp,
        calib_width=calib,
        thresh=thresh,
        kernel_width=kernel_width,
        crop=crop,
        max_iter=max_iter,
        show_pbar=progress,
    ).run()
    maps = np.asarray(maps).astype(np.complex64)
    return maps if coarse == full else _upsample_maps(maps, full)


def _upsample_maps(maps: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear interpolation of (C, *coarse) complex maps to (C, *shape) on the same field of view, in the
    centred convention of the FFT (voxel ``n // 2`` of each grid is the centre), renormalised to unit norm."""
    import torch

    coarse = maps.shape[1:]
    # fine voxel i sits at coarse coordinate (i - n//2) * m / n + m//2; grid_sample wants [-1, 1] (align_corners)
    axes = [2 * ((torch.arange(n, dtype=torch.float32) - n // 2) * m / n + m // 2) / max(m - 1, 1) - 1
            for n, m in zip(shape, coarse)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)[None]  # (1, X, Y, Z, 3) as (z, y, x)
    t = torch.from_numpy(maps)
    parts = torch.cat([t.real, t.imag])[None]  # (1, 2C, *coarse)
    out = torch.nn.functional.grid_sample(parts, grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    c = maps.shape[0]
    up = torch.complex(out[:c], out[c:])
    norm = up.abs().pow(2).sum(0).sqrt()
    return (up / torch.where(norm > 0, norm, 1)).numpy().astype(np.complex64)


def compress_coils(kspace: np.ndarray, maps: np.ndarray | None, energy: float) -> tuple[np.ndarray, np.ndarray | None]:
    """SVD coil compression: project ``C`` coils onto the fewest virtual coils holding ``energy`` of the data.

    The virtual coils are the leading eigenvectors ``U`` (C x n) of the coil covariance of the acquired
    k-space; k-space and maps are both projected (``U^H y``, ``U^H S``), so ``A`` keeps its form and white
    noise of equal variance per coil stays white with the same variance. Costs per operator application
    fall by ``C / n``; the data term loses only the discarded ``1 - energy`` of the signal.

    Args:
        kspace: (C, X, Y, Z) complex k-space (unsampled points zero).
        maps: (C, X, Y, Z) complex sensitivity maps, or None (then only k-space is projected).
        energy: fraction in (0, 1]; 1 keeps every coil (returns the inputs unchanged).

    Returns:
        (kspace (n, X, Y, Z), maps (n, X, Y, Z) or None), complex64.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"coil compression energy must lie in (0, 1], got {energy}")
    n_coils = kspace.shape[0]
    if energy >= 1 or n_coils == 1:
        return kspace, maps
    flat = kspace.reshape(n_coils, -1)
    cov = flat @ flat.conj().T
    vals, vecs = np.linalg.eigh(cov)  # ascending
    vals, vecs = vals[::-1].clip(min=0), vecs[:, ::-1]
    n = int(np.searchsorted(np.cumsum(vals) / max(vals.sum(), 1e-30), energy) + 1)
    u = np.ascontiguousarray(vecs[:, : min(n, n_coils)].conj().T).astype(np.complex64)  # (n, C) = U^H

    def project(a: np.ndarray) -> np.ndarray:
        return (u @ a.reshape(n_coils, -1)).reshape(len(u), *a.shape[1:]).astype(np.complex64)

    return project(kspace), None if maps is None else project(maps)
