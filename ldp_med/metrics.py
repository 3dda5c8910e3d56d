"""Image-quality metrics on 3-D magnitude volumes (pure functions over numpy arrays).

Conventions (also in docs/methods.md): metrics are computed over the whole volume, no mask;
the data range is ``reference.max() - reference.min()``; SSIM is scikit-image's 3-D SSIM
(7x7x7 uniform window, K1=0.01, K2=0.03) with that data range; NMSE is fastMRI's
``||recon - ref||^2 / ||ref||^2``.
"""

from __future__ import annotations

import numpy as np


def _pair(recon: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    recon = np.asarray(recon, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if recon.shape != reference.shape:
        raise ValueError(f"shape mismatch: reconstruction {recon.shape} vs reference {reference.shape}")
    return recon, reference


def data_range(reference: np.ndarray) -> float:
    """The intensity range used by PSNR and SSIM: ``max - min`` of the reference (1.0 if flat)."""
    r = float(np.max(reference) - np.min(reference))
    return r if r > 0 else 1.0


def psnr(recon: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, peak = ``data_range(reference)``."""
    recon, reference = _pair(recon, reference)
    if np.array_equal(recon, reference):  # no error at all: infinite PSNR, without numpy's divide warning
        return float("inf")
    # imported here, not at the top: with it scipy.stats, 0.6-1 s of every command's start (docs/results.md)
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(reference, recon, data_range=data_range(reference)))


def ssim(recon: np.ndarray, reference: np.ndarray) -> float:
    """3-D structural similarity (scikit-image, 7-voxel window) with ``data_range(reference)``."""
    recon, reference = _pair(recon, reference)
    from skimage.metrics import structural_similarity

    return float(structural_similarity(reference, recon, data_range=data_range(reference)))


def nmse(recon: np.ndarray, reference: np.ndarray) -> float:
    """Normalised mean squared error ``||recon - ref||^2 / ||ref||^2``."""
    recon, reference = _pair(recon, reference)
    denom = float(np.sum(reference**2))
    return float(np.sum((recon - reference) ** 2) / denom) if denom > 0 else float("inf")


def evaluate(recon: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """All metrics as a dict: ``{"psnr": dB, "ssim": ..., "nmse": ...}``."""
    return {"psnr": psnr(recon, reference), "ssim": ssim(recon, reference), "nmse": nmse(recon, reference)}


# --- calibration of std maps (over the voxels a caller selects, e.g. the head) ---------------------------

def coverage(error: np.ndarray, std: np.ndarray, z: float = 1.645) -> float:
    """Fraction of voxels with ``|error| <= z * std`` (0.9 expected for a calibrated Gaussian std at z=1.645)."""
    error, std = _pair(np.abs(error), std)
    return float(np.mean(error <= z * std))


def std_scale_for(error: np.ndarray, std: np.ndarray, level: float = 0.9, z: float = 1.645) -> float:
    """The scale ``s`` with ``coverage(error, s * std, z) == level`` (the calibration of ``posterior.std_scale``)."""
    error, std = _pair(np.abs(error), std)
    return float(np.quantile(error / (z * np.maximum(std, 1e-12)), level))


def sparsification(error: np.ndarray, order: np.ndarray, steps: int = 20) -> np.ndarray:
    """RMSE of the voxels left after removing the fraction ``k / steps`` (k = 0..steps-1) ranked highest by ``order``."""
    error, order = _pair(np.abs(error).ravel(), np.asarray(order).ravel())
    sq = (error**2)[np.argsort(-order, kind="stable")]
    tail = np.cumsum(sq[::-1])[::-1]  # sum of squares of the voxels from rank i on
    starts = (np.arange(steps) * len(sq)) // steps
    return np.sqrt(tail[starts] / (len(sq) - starts))


def ause(error: np.ndarray, std: np.ndarray, steps: int = 20) -> float:
    """Area under the sparsification error curve (Ilg et al., ECCV 2018): the std's ranking against the
    oracle (ranking by the true error), RMSE normalised by the RMSE of all voxels; 0 = perfect ranking."""
    curve = sparsification(error, std, steps) - sparsification(error, np.abs(error), steps)
    rmse = float(np.sqrt(np.mean(np.abs(np.asarray(error, np.float64)) ** 2)))
    return float(np.mean(curve) / rmse) if rmse > 0 else 0.0
