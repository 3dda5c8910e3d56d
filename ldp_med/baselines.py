"""Classical reconstructions: zero-filled, compressed sensing (sigpy), NLM denoising, cubic interpolation.

These are the methods users compare against; they wrap the field's libraries (sigpy, scikit-image,
scipy) and never re-implement them. k-space arrays follow docs/formats.md: ``kspace`` complex64
(C, X, Y, Z), ``mask`` (1, Y, Z) or broadcastable, ``maps`` complex64 (C, X, Y, Z) or None.
"""

from __future__ import annotations

import numpy as np
import torch

from ldp_med.errors import LdpError, require
from ldp_med.physics.noise import estimate_image_noise


def zero_filled(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    """Coil-combined adjoint (with maps) or root-sum-of-squares (without) of the masked k-space.

    Returns:
        complex64 (X, Y, Z) image (real, non-negative when combined by root-sum-of-squares).
    """
    from ldp_med.physics.mri import zero_filled as zf

    y = torch.from_numpy(np.ascontiguousarray(kspace))[None]
    m = torch.from_numpy(np.ascontiguousarray(mask).astype(np.float32))
    s = None if maps is None else torch.from_numpy(np.ascontiguousarray(maps))[None]
    return zf(y, m, s)[0].numpy()


def _maps_or_ones(kspace: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    if maps is not None:
        return maps
    if kspace.shape[0] != 1:
        raise LdpError("multi-coil k-space needs sensitivity maps (estimate them with ESPIRiT first)")
    return np.ones(kspace.shape, np.complex64)


def cs_l1_wavelet(
    kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None, lam: float, iters: int,
    wavelet: str = "db4", progress: bool = False,
) -> np.ndarray:
    """L1-wavelet compressed sensing (sigpy ``L1WaveletRecon``); returns the complex image (X, Y, Z)."""
    app = require("sigpy.mri.app", feature="L1-wavelet compressed sensing")
    maps = _maps_or_ones(kspace, maps)
    weights = np.broadcast_to(mask.astype(np.float32), kspace.shape[1:])
    recon = app.L1WaveletRecon(
        kspace * weights, maps, lam, weights=weights, wave_name=wavelet, max_iter=iters, show_pbar=progress
    )
    return np.asarray(recon.run(), dtype=np.complex64)


def cs_total_variation(
    kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray | None, lam: float, iters: int, progress: bool = False
) -> np.ndarray:
    """Total-variation compressed sensing (sigpy ``TotalVariationRecon``); complex image (X, Y, Z)."""
    app = require("sigpy.mri.app", feature="total-variation compressed sensing")
    maps = _maps_or_ones(kspace, maps)
    weights = np.broadcast_to(mask.astype(np.float32), kspace.shape[1:])
    recon = app.TotalVariationRecon(
        kspace * weights, maps, lam, weights=weights, max_iter=iters, show_pbar=progress
    )
    return np.asarray(recon.run(), dtype=np.complex64)


def denoise_nlm(volume: np.ndarray, patch_size: int = 3, patch_distance: int = 3, h_factor: float = 0.8) -> np.ndarray:
    """3-D non-local means (scikit-image) with the noise level estimated from the data.

    Args:
        volume: float (X, Y, Z) noisy magnitude.
        h_factor: filter strength as a multiple of the estimated noise sigma.
    """
    from skimage.restoration import denoise_nl_means

    vol = np.asarray(volume, np.float32)
    sigma = estimate_image_noise(vol)
    out = denoise_nl_means(
        vol, patch_size=patch_size, patch_distance=patch_distance, h=h_factor * sigma,
        sigma=sigma, fast_mode=True, channel_axis=None,
    )
    return np.asarray(out, np.float32)


def denoise_bm4d(volume: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """BM4D (Maggioni et al., IEEE TIP 2013; PyPI ``bm4d``, the ``[eval]`` extra) with a Gaussian noise model.

    Args:
        volume: float (X, Y, Z) noisy magnitude.
        sigma: noise std in the volume's units; None estimates it (:func:`estimate_image_noise`).
    """
    bm4d = require("bm4d", feature="BM4D denoising")
    vol = np.asarray(volume, np.float32)
    sigma = estimate_image_noise(vol) if sigma is None else float(sigma)
    return np.asarray(bm4d.bm4d(vol, sigma), np.float32)


def cubic_upsample(coarse: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Cubic-spline interpolation of a thick-slice volume onto the fine grid.

    Fine voxel ``i`` along ``axis`` sits at coarse index ``(i - (factor - 1) / 2) / factor``
    (the coarse voxel is the average of ``factor`` fine slices; see physics.degradations).
    """
    from scipy.ndimage import map_coordinates

    coarse = np.asarray(coarse, np.float32)
    shape = list(coarse.shape)
    shape[axis] *= factor
    grids = [np.arange(n, dtype=np.float32) for n in shape]
    grids[axis] = (grids[axis] - (factor - 1) / 2.0) / factor
    coords = np.meshgrid(*grids, indexing="ij")
    out = map_coordinates(coarse, coords, order=3, mode="nearest", prefilter=True)
    return out.astype(np.float32)
