"""Turn a clean volume into a realistic degraded one: multi-coil k-space, noise, or thick slices.

Intensity convention (docs/formats.md): k-space is simulated from the clean volume divided by its
99.9th percentile (``scale``), multiplied by a smooth random phase, so that the stored
``reference`` is ~[0, 1] and k-space is complex-valued; denoise and superres keep the input's units
and the noise sigma is relative to the clean 99.9th percentile.

Nothing here writes files: :func:`simulate` returns the data and the caller saves it
(``ldp_med.io.save_output``).
"""

from __future__ import annotations

import os

import numpy as np
import torch

import ldp_med
from ldp_med.config import SimulateConfig
from ldp_med.errors import InputError
from ldp_med.io.kspace import KSpaceData
from ldp_med.io.volume import Volume
from ldp_med.physics import coils, masks, noise
from ldp_med.physics.degradations import slice_average
from ldp_med.physics.fft import fftnc

DEFAULT_NOISE = {"kspace": 0.005, "denoise": 0.05, "superres": 0.0}
SIGNED_FRACTION = 0.1  # negative signal / positive signal above which a volume is not a magnitude image


def intensity_scale(data: np.ndarray) -> float:
    """The clean volume's 99.9th percentile (1.0 for an all-zero volume)."""
    p = float(np.percentile(data, 99.9))
    return p if p > 0 else 1.0


def check_magnitude(volume: Volume, source: str | os.PathLike | None = None) -> None:
    """Refuse a signed volume (a statistical map, a phase or CT image): k-space and Rician noise model a
    magnitude image, and the magnitude reconstructed from a signed one matches neither it nor its reference.

    Magnitude MR images may dip below zero after interpolation or denoising (dipy's ascm output: negative
    voxels hold 0.4% of the positive signal); a volume whose negative voxels hold more than
    :data:`SIGNED_FRACTION` of it is refused.

    Raises:
        InputError: naming ``source`` (default ``volume.meta["source"]``), the fraction and the minimum.
    """
    data = volume.data
    negative = -float(data[data < 0].sum(dtype=np.float64))
    positive = float(data[data > 0].sum(dtype=np.float64))
    if negative > SIGNED_FRACTION * positive:
        share = negative / positive if positive > 0 else float("inf")
        raise InputError(source or volume.meta.get("source"),
                         f"signed intensities (negative voxels hold {share:.0%} as much signal as positive ones, "
                         f"minimum {float(data.min()):.4g}): k-space and Rician noise need a magnitude image")


def simulate_kspace(volume: Volume, cfg: SimulateConfig) -> KSpaceData:
    """Multi-coil Cartesian k-space of ``volume`` (readout along X, mask over Y/Z), with noise.

    Returns:
        KSpaceData with kspace complex64 (C, X, Y, Z), mask uint8 (1, Y, Z), the birdcage
        sensitivity maps used (C > 1), the scaled clean magnitude as ``reference`` and the affine.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    scale = intensity_scale(volume.data)
    x = torch.tensor(volume.data / scale, dtype=torch.float32)
    phase = torch.as_tensor(noise.smooth_random_phase(volume.shape, gen))
    img = x * torch.exp(1j * phase)
    maps = None
    if cfg.coils > 1:
        maps = coils.birdcage_maps(cfg.coils, volume.shape)
        coil_imgs = torch.from_numpy(maps) * img
    else:
        coil_imgs = img[None]
    k = fftnc(coil_imgs.to(torch.complex64))
    if cfg.noise > 0:
        k = k + noise.complex_gaussian_noise(k.shape, cfg.noise, gen)
    try:
        mask = masks.make_mask(cfg.mask, volume.shape[1:], cfg.accel, cfg.calib, cfg.seed)
    except ValueError as exc:
        raise InputError(volume.meta.get("source"), f"cannot build the {cfg.mask} mask: {exc}") from None
    k = k * torch.from_numpy(mask)
    attrs = {
        "task": "kspace",
        "acceleration": float(masks.realised_acceleration(mask)),
        "requested_acceleration": float(cfg.accel),
        "mask_kind": cfg.mask,
        "calib": int(cfg.calib),
        "noise_std": float(cfg.noise),
        "seed": int(cfg.seed),
        "scale": scale,
        "ldp_med_version": ldp_med.__version__,
    }
    return KSpaceData(
        kspace=k.numpy().astype(np.complex64),
        mask=mask[None].astype(np.uint8),
        sensitivity_maps=maps,
        reference=(volume.data / scale).astype(np.float32),
        affine=volume.affine.astype(np.float64),
        attrs=attrs,
    )


def simulate_denoise(volume: Volume, cfg: SimulateConfig) -> Volume:
    """Add Gaussian or Rician noise of std ``cfg.noise`` x the clean 99.9th percentile."""
    gen = torch.Generator().manual_seed(cfg.seed)
    sigma = cfg.noise * intensity_scale(volume.data)
    x = torch.tensor(volume.data, dtype=torch.float32)
    if cfg.noise_kind == "rician":
        y = noise.add_rician_noise(x, sigma, gen)
    else:
        y = noise.add_gaussian_noise(x, sigma, gen)
    meta = {**volume.meta, "task": "denoise", "noise_std": cfg.noise, "noise_kind": cfg.noise_kind}
    return Volume(data=y.numpy().astype(np.float32), affine=volume.affine.copy(), meta=meta)


def simulate_superres(volume: Volume, cfg: SimulateConfig) -> Volume:
    """Average ``cfg.factor`` consecutive slices along ``cfg.axis`` (thick slices); optional Gaussian noise.

    The returned affine describes the thick slices (physics.degradations.coarse_affine).
    """
    coarse, affine = slice_average(volume.data, volume.affine, cfg.factor, cfg.axis)
    if cfg.noise > 0:
        gen = torch.Generator().manual_seed(cfg.seed)
        sigma = cfg.noise * intensity_scale(volume.data)
        coarse = noise.add_gaussian_noise(torch.from_numpy(coarse).float(), sigma, gen).numpy()
    meta = {k: v for k, v in volume.meta.items() if k not in ("qform", "sform", "zooms")}
    meta.update(task="superres", factor=cfg.factor, axis=cfg.axis)
    return Volume(data=np.asarray(coarse, np.float32), affine=affine, meta=meta)


def simulate(volume: Volume, cfg: SimulateConfig, source: str | os.PathLike | None = None) -> KSpaceData | Volume:
    """Simulate ``cfg.task`` from ``volume``; nothing is written (the caller saves the result).

    Args:
        volume: the clean volume, data (X, Y, Z).
        cfg: the simulation settings; ``cfg.task`` picks :func:`simulate_kspace` (``"kspace"``),
            :func:`simulate_denoise` (``"denoise"``) or :func:`simulate_superres` (``"superres"``).
        source: the clean volume's file, named in errors and recorded as ``attrs["source"]`` of k-space.

    Returns:
        KSpaceData for ``"kspace"`` (save with ``ldp_med.io.kspace.save_kspace``), else a Volume of
        shape (X, Y, Z), or thick-slice (X, Y, Z // factor along ``cfg.axis``) for superres (save with
        ``ldp_med.io.nifti.save_nifti``); ``ldp_med.io.save_output`` writes either.

    Raises:
        InputError: a signed volume for k-space or Rician noise (:func:`check_magnitude`), or a mask that
            cannot be built for the volume's phase-encoding plane.
    """
    if cfg.task == "kspace" or (cfg.task == "denoise" and cfg.noise_kind == "rician"):
        check_magnitude(volume, source)
    if cfg.task == "kspace":
        ksp = simulate_kspace(volume, cfg)
        if source is not None:
            ksp.attrs["source"] = str(source)
        return ksp
    if cfg.task == "denoise":
        return simulate_denoise(volume, cfg)
    return simulate_superres(volume, cfg)
