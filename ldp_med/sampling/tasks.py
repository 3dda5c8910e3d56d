"""Inverse problems for the posterior sampler, and the map between acquisition and model space.

A task builder turns an input into a :class:`Problem`: the operator ``A``, the measurements ``y``,
a pseudo-inverse image on the *acquisition grid* (the warm start, and the volume whose geometry and
intensity range define the model-space mapping) and the noise level.

- kspace: ``A = mask * FFT(maps * x)`` (:class:`MRIOperator`), ``y`` the k-space; grid = the k-space
  grid; pseudo-inverse = magnitude of the (coil-combined) zero-filled image.
- denoise: ``A = I``; pseudo-inverse = the noisy image.
- superres: ``A`` averages ``factor`` thin slices (:class:`SliceAverageOperator`); the acquisition
  grid is the *fine* grid (:func:`fine_affine`), ``y`` the thick-slice volume; pseudo-inverse =
  cubic interpolation.

:class:`SpaceMap` moves images between the acquisition grid and the model grid inside the sampler.
It is built from the :class:`ModelSpaceInfo` of :class:`ToModelSpace` applied to the pseudo-inverse
(same affines, same intensity scale), but resamples with MONAI's ``AffineTransform`` instead of
re-running the invertible ``Compose``: one ``grid_sample`` per direction, differentiable (latent DPS
back-propagates through it), batched, and free of the per-call percentile computation, which must
not change between sampler steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from monai.networks.layers import AffineTransform

from ldp_med.baselines import cubic_upsample
from ldp_med.data.transforms import ModelSpaceInfo
from ldp_med.errors import InputError
from ldp_med.io.kspace import KSpaceData
from ldp_med.io.volume import Volume, check_volume_array
from ldp_med.physics.degradations import SliceAverageOperator, fine_affine
from ldp_med.physics.mri import MRIOperator
from ldp_med.physics.operators import DenoiseOperator, LinearOperator
from ldp_med.sampling.consistency import estimate_image_noise, estimate_kspace_noise

__all__ = ["Problem", "kspace_problem", "denoise_problem", "superres_problem", "SpaceMap"]


@dataclass
class Problem:
    """One reconstruction problem on its acquisition grid.

    Attributes:
        task: "kspace", "denoise" or "superres".
        operator: the forward operator ``A``; images are (B, X, Y, Z) on the acquisition grid.
        y: measurements with batch 1: k-space (1, C, X, Y, Z) complex64, or a real (1, ...) image.
        pinv: pseudo-inverse magnitude (X, Y, Z) float32 with the acquisition grid's affine (RAS+ mm).
        noise_std: measurement noise std per (real / imaginary) component, units of ``y``.
        noise_source: "file", "given" or "estimated".
        meta: what is known about the input (``source`` ...), passed on to the result.
    """

    task: str
    operator: LinearOperator
    y: torch.Tensor
    pinv: Volume
    noise_std: float
    noise_source: str
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The acquisition grid (X, Y, Z) on which the reconstruction lives."""
        return tuple(self.pinv.shape)

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel-to-RAS affine of the acquisition grid."""
        return self.pinv.affine

    @property
    def is_complex(self) -> bool:
        return self.task == "kspace"


def _noise(given: float | None, file_value, estimate) -> tuple[float, str]:
    if given is not None:
        if not (np.isfinite(given) and given >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {given}")
        return float(given), "given"
    if file_value is not None:
        return float(file_value), "file"
    return float(estimate()), "estimated"


def kspace_problem(ksp: KSpaceData, noise_std: float | None = None, espirit_calib: int | None = None,
                   coil_energy: float = 1.0) -> Problem:
    """Cartesian MRI problem from a k-space container.

    Maps come from the file; multi-coil data without maps gets ESPIRiT maps from the calibration
    region (``espirit_calib``, default the file's ``calib`` attribute or 12; kernel width 6, or
    ``calib - 1`` for a smaller region); single-coil data without
    maps uses identity maps. The noise level is ``noise_std`` if given, else the file's ``noise_std``
    attribute, else :func:`estimate_kspace_noise`. ``coil_energy`` < 1 compresses the coils to the fewest
    virtual coils holding that fraction of the data (:func:`ldp_med.physics.coils.compress_coils`) after
    the noise estimate and the maps; the pseudo-inverse comes from the full data.

    Returns:
        Problem with ``y`` (1, C, X, Y, Z) complex64 and the zero-filled magnitude as pseudo-inverse,
        in the container's (``reference``) units, on its grid and affine.
    """
    source = ksp.attrs.get("source")
    ksp = KSpaceData(ksp.kspace, ksp.mask, ksp.sensitivity_maps, ksp.reference, ksp.affine, dict(ksp.attrs)).validate(source)
    maps = ksp.sensitivity_maps
    if maps is None and ksp.n_coils > 1:
        from ldp_med.physics.coils import espirit_maps

        calib = int(espirit_calib or ksp.attrs.get("calib") or 12)
        calib = min(calib, *ksp.shape)
        try:
            maps = espirit_maps(ksp.kspace, calib=calib, kernel_width=min(6, calib - 1))
        except ValueError as exc:
            raise InputError(source, f"cannot estimate coil maps with ESPIRiT: {exc}") from None
    mask = torch.from_numpy(np.ascontiguousarray(ksp.mask).astype(np.float32))

    def operator(kspace, maps):
        op = MRIOperator(mask, None if maps is None else torch.from_numpy(np.ascontiguousarray(maps))[None])
        return op, torch.from_numpy(np.ascontiguousarray(kspace))[None]

    op, y = operator(ksp.kspace, maps)
    zf = op.A_adjoint(y)[0]
    if not torch.isfinite(zf).all():
        raise InputError(source, "the zero-filled image has NaN/Inf values (check the coil maps)")
    meta = {"source": source} if source else {}
    pinv = Volume(zf.abs().numpy().astype(np.float32), ksp.affine, dict(meta))
    sigma, how = _noise(noise_std, ksp.attrs.get("noise_std"), lambda: estimate_kspace_noise(ksp.kspace, ksp.mask))
    if coil_energy < 1 and maps is not None:
        from ldp_med.physics.coils import compress_coils

        op, y = operator(*compress_coils(ksp.kspace, maps, coil_energy))
    return Problem("kspace", op, y, pinv, sigma, how, {**meta, "coils": int(y.shape[1])})


def _image(volume: Volume) -> np.ndarray:
    return check_volume_array(volume.data, volume.meta.get("source"))


def denoise_problem(volume: Volume, noise_std: float | None = None) -> Problem:
    """Denoising problem ``y = x + n`` (``A = I``) on the volume's own grid and units.

    The noise level is ``noise_std`` (absolute, the volume's units) if given, else estimated with
    scikit-image (a ``noise_std`` in the volume's metadata is relative to the signal, so it is not used).
    """
    data = _image(volume)
    y = torch.from_numpy(np.ascontiguousarray(data))[None]
    sigma, how = _noise(noise_std, None, lambda: estimate_image_noise(data))
    meta = {k: v for k, v in volume.meta.items() if k == "source"}
    pinv = Volume(data.copy(), volume.affine, meta)
    return Problem("denoise", DenoiseOperator(), y, pinv, sigma, how, meta)


def superres_problem(volume: Volume, factor: int, axis: int, noise_std: float | None = None) -> Problem:
    """Slice-thickness super-resolution of a thick-slice ``volume``.

    The acquisition (and output) grid is the fine grid: ``factor`` times more slices along ``axis``,
    with :func:`fine_affine`; ``A`` averages blocks of ``factor`` fine slices back to ``volume``'s grid.
    The pseudo-inverse is :func:`ldp_med.baselines.cubic_upsample`.
    """
    source = volume.meta.get("source")
    data = _image(volume)
    if isinstance(factor, bool) or int(factor) != factor or factor < 2:
        raise InputError(source, f"super-resolution factor must be an integer >= 2, got {factor}")
    if axis not in (0, 1, 2):
        raise InputError(source, f"super-resolution axis must be 0, 1 or 2, got {axis}")
    factor = int(factor)
    fine = cubic_upsample(data, factor, axis)
    y = torch.from_numpy(np.ascontiguousarray(data))[None]
    sigma, how = _noise(noise_std, None, lambda: estimate_image_noise(data))
    meta = {"source": source} if source else {}
    pinv = Volume(fine, fine_affine(volume.affine, factor, axis), meta)
    return Problem("superres", SliceAverageOperator(factor, axis), y, pinv, sigma, how, meta)


class SpaceMap:
    """Acquisition grid <-> model grid, with the intensity map ``acquisition = model * scale + offset``.

    Resampling is trilinear (MONAI ``AffineTransform``, pull direction, voxel coordinates), zero
    outside the source grid, like ``ToModelSpace``'s ``Spacing`` and zero padding. Acquisition
    voxels outside the model grid (a field of view larger than the model's) take a fallback image;
    ``coverage`` (X, Y, Z) in [0, 1] says how much of each acquisition voxel the model grid covers.

    Args:
        acq_shape, acq_affine: acquisition grid (X, Y, Z) and its voxel-to-RAS affine.
        grid, model_affine: model grid and its affine (per volume, from ``ToModelSpace``).
        scale, offset: intensity map (scanner units per model unit, and the scanner value of model 0).
    """

    def __init__(self, acq_shape, acq_affine: np.ndarray, grid, model_affine: np.ndarray, scale: float, offset: float):
        self.acq_shape = tuple(int(n) for n in acq_shape)
        self.grid = tuple(int(n) for n in grid)
        self.scale, self.offset = float(scale), float(offset)
        acq_affine = np.asarray(acq_affine, np.float64)
        model_affine = np.asarray(model_affine, np.float64)
        # pull matrices: output voxel index -> input voxel index
        self._to_acq = torch.as_tensor(np.linalg.solve(model_affine, acq_affine), dtype=torch.float32)
        self._to_model = torch.as_tensor(np.linalg.solve(acq_affine, model_affine), dtype=torch.float32)
        self._resample = AffineTransform(normalized=False, mode="bilinear", padding_mode="zeros",
                                         align_corners=True, reverse_indexing=True, zero_centered=False)
        ones = torch.ones(1, 1, *self.grid)
        self.coverage = self._resample(ones, self._to_acq, self.acq_shape)[0, 0].clamp(0, 1)

    @classmethod
    def from_info(cls, info: ModelSpaceInfo) -> "SpaceMap":
        """The map matching what :class:`ToModelSpace` did to the pseudo-inverse."""
        return cls(info.original_shape, info.original_affine, info.grid, info.model_affine, info.scale, info.offset)

    @property
    def coverage_fraction(self) -> float:
        """Fraction of the acquisition field of view that lies inside the model grid."""
        return float(self.coverage.mean())

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Acquisition image (B, X, Y, Z), acquisition units -> model image (B, 1, *grid) in [0, 1]."""
        m = (x.float() - self.offset) / self.scale
        out = self._resample(m[:, None], self._to_model.to(x.device), self.grid)
        return out.clamp(0, 1)

    def to_acq(self, m: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """Model image (B, 1, *grid) -> acquisition image (B, X, Y, Z) in acquisition units.

        Args:
            m: model-space image(s), model units.
            fallback: acquisition-grid image(s) (B or 1, X, Y, Z) used where the model grid does not
                reach (weighted by ``1 - coverage``); None means the background value ``offset``.
        """
        if m.ndim == 4:
            m = m[:, None]
        v = self._resample(m.float(), self._to_acq.to(m.device), self.acq_shape)[:, 0]
        cov = self.coverage.to(m.device)
        rest = self.offset if fallback is None else fallback.to(m.device).float()
        return v * self.scale + self.offset * cov + (1 - cov) * rest
