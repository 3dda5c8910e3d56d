"""One builder per task: an input (k-space container or volume) -> the :class:`Problem` every method solves.

A problem holds the operator ``A``, the measurements ``y``, a pseudo-inverse image on the *acquisition
grid* (the classical zero-filled / noisy / cubic image: the warm start of the prior, and the volume whose
geometry and intensity range define the model-space map), the noise level, and for k-space the coil maps
(from the file, or from one ESPIRiT call). The classical methods and the latent prior read the same problem.

- kspace: ``A = mask * FFT(maps * x)`` (:class:`MRIOperator`), ``y`` the k-space; grid = the k-space
  grid; pseudo-inverse = magnitude of the (coil-combined) zero-filled image.
- denoise: ``A = I``; pseudo-inverse = the noisy image.
- superres: ``A`` averages ``factor`` thin slices (:class:`SliceAverageOperator`); the acquisition
  grid is the *fine* grid (:func:`fine_affine`), ``y`` the thick-slice volume; pseudo-inverse =
  cubic interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ldp_med.baselines import cubic_upsample
from ldp_med.errors import InputError
from ldp_med.io.kspace import KSpaceData
from ldp_med.io.volume import Volume, check_volume_array
from ldp_med.physics.degradations import SliceAverageOperator, fine_affine
from ldp_med.physics.masks import realised_acceleration
from ldp_med.physics.mri import MRIOperator
from ldp_med.physics.noise import estimate_image_noise, estimate_kspace_noise
from ldp_med.physics.operators import DenoiseOperator, LinearOperator
from ldp_med.tasks import acquisition_regimes

__all__ = ["Problem", "kspace_problem", "denoise_problem", "superres_problem", "slice_geometry", "is_thick",
           "DEFAULT_ESPIRIT_CALIB"]

#: A slice axis is read from the voxel sizes when it is this many times thicker than the thickest other axis.
THICK_RATIO = 1.5

#: ESPIRiT calibration width when neither the config nor the file's ``calib`` attribute gives one.
DEFAULT_ESPIRIT_CALIB = 12


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
        meta: what is known about the input (``source``: the file being reconstructed, ...), passed on to
            the result.
        kspace: the validated k-space container with its coil maps (file or ESPIRiT) filled in (kspace
            task only); what the classical k-space methods read.
    """

    task: str
    operator: LinearOperator
    y: torch.Tensor
    pinv: Volume
    noise_std: float
    noise_source: str
    meta: dict = field(default_factory=dict)
    kspace: KSpaceData | None = None

    @property
    def source(self):
        """The file being reconstructed (None for data given in memory); named in errors."""
        return self.meta.get("source")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The acquisition grid (X, Y, Z) on which the reconstruction lives."""
        return tuple(self.pinv.shape)

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel-to-RAS affine of the acquisition grid."""
        return self.pinv.affine

    @property
    def voxel_mm3(self) -> float:
        """Volume of one acquisition voxel (mm^3)."""
        return abs(float(np.linalg.det(self.affine[:3, :3])))

    def regimes(self, model=None) -> tuple[str, ...]:
        """The acquisition's regimes, whose settings come before the task's (``ldp_med.tasks.REGIME_SETTINGS``):
        ``"coarse"`` voxels, a field of view ``"small"`` against the grid of ``model`` (a
        :class:`ldp_med.config.ModelConfig`; None: not judged) (:func:`ldp_med.tasks.acquisition_regimes`)."""
        fraction = None
        if model is not None:
            fraction = self.voxel_mm3 * float(np.prod(self.shape)) / (float(np.prod(model.grid)) * model.voxel_mm**3)
        return acquisition_regimes(self.voxel_mm3, fraction)

    @property
    def is_complex(self) -> bool:
        return self.task == "kspace"

    @property
    def factor(self) -> float:
        """The undersampling factor the task's settings are chosen at (``ldp_med.tasks.TASK_SETTINGS``): the
        k-space mask's realised acceleration, 1 for the image tasks."""
        return 1.0 if self.kspace is None else realised_acceleration(self.kspace.mask)


def _noise(given: float | None, file_value, estimate) -> tuple[float, str]:
    if given is not None:
        if not (np.isfinite(given) and given >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {given}")
        return float(given), "given"
    if file_value is not None:
        return float(file_value), "file"
    return float(estimate()), "estimated"


def _espirit_calib(ksp: KSpaceData, calib: int | None, source) -> int:
    """The calibration width: ``calib`` if given, else the file's ``calib`` attribute, else 12; it must fit
    the grid and its centred (Y, Z) square must be fully sampled."""
    given = calib is not None
    calib = int(calib if given else ksp.attrs.get("calib") or DEFAULT_ESPIRIT_CALIB)
    name = "baseline.espirit_calib" if given else "calibration width (file attribute calib, else 12)"
    if calib < 2 or calib > min(ksp.shape):
        raise InputError(source, f"{name}={calib} does not fit the k-space grid {'x'.join(map(str, ksp.shape))} "
                                 f"(need 2..{min(ksp.shape)})")
    mask = np.broadcast_to(ksp.mask.astype(bool), (1, *ksp.shape))[0]
    lo = [n // 2 - calib // 2 for n in ksp.shape]
    centre = mask[:, lo[1]:lo[1] + calib, lo[2]:lo[2] + calib]
    if not centre.all():
        raise InputError(source, f"{name}={calib}: the central {calib}x{calib} k-space square is not fully sampled "
                                 f"({centre.mean():.0%}); ESPIRiT needs a fully sampled calibration region")
    return calib


def kspace_problem(ksp: KSpaceData, noise_std: float | None = None, espirit_calib: int | None = None,
                   source=None, progress: bool = False) -> Problem:
    """Cartesian MRI problem from a k-space container.

    Maps come from the file; multi-coil data without maps gets ESPIRiT maps from the calibration
    region (``espirit_calib``, default the file's ``calib`` attribute or 12; kernel width 6, or
    ``calib - 1`` for a smaller region); single-coil data without maps uses identity maps. The noise
    level is ``noise_std`` if given, else the file's ``noise_std`` attribute, else
    :func:`estimate_kspace_noise`.

    Args:
        source: the file the container was read from (named in errors; its ``source`` attribute is the
            clean volume a simulation came from, not this file).
        progress: a progress bar over ESPIRiT's iterations, when it runs.

    Returns:
        Problem with ``y`` (1, C, X, Y, Z) complex64 and the zero-filled magnitude as pseudo-inverse,
        in the container's (``reference``) units, on its grid and affine.

    Raises:
        InputError: invalid data, a calibration width that does not fit, or failed ESPIRiT, naming ``source``.
    """
    ksp = KSpaceData(ksp.kspace, ksp.mask, ksp.sensitivity_maps, ksp.reference, ksp.affine, dict(ksp.attrs)).validate(source)
    needs_maps = ksp.sensitivity_maps is None and ksp.n_coils > 1
    if needs_maps or espirit_calib is not None:  # a width the user gave must fit, whether or not ESPIRiT runs
        calib = _espirit_calib(ksp, espirit_calib, source)
    if needs_maps:
        from ldp_med.physics.coils import espirit_maps

        try:
            ksp.sensitivity_maps = espirit_maps(ksp.kspace, calib=calib, kernel_width=min(6, calib - 1),
                                                progress=progress)
        except ValueError as exc:
            raise InputError(source, f"cannot estimate coil maps with ESPIRiT: {exc}") from None
    maps = ksp.sensitivity_maps
    mask = torch.from_numpy(np.ascontiguousarray(ksp.mask).astype(np.float32))
    op = MRIOperator(mask, None if maps is None else torch.from_numpy(np.ascontiguousarray(maps))[None])
    y = torch.from_numpy(np.ascontiguousarray(ksp.kspace))[None]
    zf = op.A_adjoint(y)[0]
    if not torch.isfinite(zf).all():
        raise InputError(source, "the zero-filled image has NaN/Inf values (check the coil maps)")
    meta = {"source": str(source)} if source is not None else {}
    pinv = Volume(zf.abs().numpy().astype(np.float32), ksp.affine, dict(meta))
    sigma, how = _noise(noise_std, ksp.attrs.get("noise_std"), lambda: estimate_kspace_noise(ksp.kspace, ksp.mask))
    return Problem("kspace", op, y, pinv, sigma, how, {**meta, "coils": ksp.n_coils}, kspace=ksp)


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
    meta = dict(volume.meta)  # same grid: the input's header fields (qform/sform codes ...) carry over
    pinv = Volume(data.copy(), volume.affine, meta)
    return Problem("denoise", DenoiseOperator(), y, pinv, sigma, how, meta)


def is_thick(voxel_sizes) -> bool:
    """True when the thickest of the first three axes is at least :data:`THICK_RATIO` times the thickest other one (a
    thick-slice volume: ``reconstruct`` without ``--task`` super-resolves it, and :func:`slice_geometry` reads its
    slice axis from it)."""
    sizes = np.asarray(voxel_sizes, np.float64)[:3]
    thickest = int(np.argmax(sizes))
    return bool(sizes[thickest] >= THICK_RATIO * np.delete(sizes, thickest).max())


def slice_geometry(voxel_sizes, factor: int | None = None, axis: int | None = None) -> tuple[int, int]:
    """The slice-thickness factor and slice axis of a thick-slice volume: those given, else read from its voxel sizes.

    ``axis`` None: the thickest axis when it is at least :data:`THICK_RATIO` times the thickest other one, else 2.
    ``factor`` None: that axis' voxel size over the mean of the other two, rounded, at least 2; 2 when the axis is
    not that much thicker (an isotropic volume). A 0.9 x 0.9 x 3 mm scan gives (3, 2); 4 x 1 x 1 mm (4, 0).
    """
    sizes = np.asarray(voxel_sizes, np.float64)[:3]
    if axis is None:
        axis = int(np.argmax(sizes)) if is_thick(sizes) else 2
    if factor is None:
        others = np.delete(sizes, axis)
        thick = sizes[axis] >= THICK_RATIO * others.max()
        factor = max(2, int(round(sizes[axis] / others.mean()))) if thick else 2
    return int(factor), int(axis)


def superres_problem(volume: Volume, factor: int | None = None, axis: int | None = None,
                     noise_std: float | None = None) -> Problem:
    """Slice-thickness super-resolution of a thick-slice ``volume``.

    The acquisition (and output) grid is the fine grid: ``factor`` times more slices along ``axis``,
    with :func:`fine_affine`; ``A`` averages blocks of ``factor`` fine slices back to ``volume``'s grid.
    The pseudo-inverse is :func:`ldp_med.baselines.cubic_upsample`. ``factor`` / ``axis`` None: read from the
    voxel sizes (:func:`slice_geometry`).
    """
    source = volume.meta.get("source")
    data = _image(volume)
    if factor is None or axis is None:
        factor, axis = slice_geometry(volume.voxel_sizes, factor, axis)
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
