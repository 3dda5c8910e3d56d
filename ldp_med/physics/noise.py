"""Seeded noise and phase simulation, and noise-level estimation from data.

Every simulating function takes ``generator``: a ``torch.Generator``, an int seed (a fresh CPU
generator is seeded with it) or None (torch's global RNG). Noise is drawn on the generator's device
and moved to the data's device, so a given seed gives the same numbers whatever device the data is on.
The estimators (:func:`estimate_kspace_noise`, :func:`estimate_image_noise`) are deterministic numpy code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ldp_med.physics.fft import fftnc, ifftnc

GeneratorLike = torch.Generator | int | None

#: wavelet coefficients left out at each face by :func:`estimate_rician_noise`: db2's four taps reach two
#: coefficients into the symmetric extension, where the noise meets its own mirror image and partly cancels
_BORDER = 2


def as_generator(generator: GeneratorLike) -> torch.Generator | None:
    """Return a ``torch.Generator`` for an int seed, the generator itself, or None (global RNG)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None; got {type(generator).__name__}")
    g = torch.Generator()
    g.manual_seed(generator)
    return g


def _randn(shape, g: torch.Generator | None) -> torch.Tensor:
    device = g.device if g is not None else None
    return torch.randn(tuple(shape), generator=g, device=device, dtype=torch.float32)


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be finite and >= 0; got {sigma}")
    return sigma


def complex_gaussian_noise(shape, sigma: float, generator: GeneratorLike = None) -> torch.Tensor:
    """Circular complex Gaussian noise whose real and imaginary parts each have std ``sigma``.

    (So ``E|n|^2 = 2 sigma^2``; unlike ``torch.randn(dtype=complex64)``, which splits unit variance.)

    Args:
        shape: output shape.
        sigma: per-component standard deviation (>= 0).
        generator: see the module docstring.

    Returns:
        complex64 tensor of ``shape`` on the generator's device.
    """
    sigma = _check_sigma(sigma)
    g = as_generator(generator)
    return torch.view_as_complex(_randn((*tuple(shape), 2), g) * sigma).contiguous()


def add_gaussian_noise(x: torch.Tensor, sigma: float, generator: GeneratorLike = None) -> torch.Tensor:
    """Add white Gaussian noise: real ``x`` gets ``N(0, sigma^2)``; complex ``x`` gets
    :func:`complex_gaussian_noise` (std ``sigma`` on each of the real and imaginary parts).

    Args:
        x: real or complex tensor, any shape.
        sigma: per-component standard deviation.
        generator: see the module docstring.

    Returns:
        ``x + noise``, same shape, dtype and device as ``x``.
    """
    sigma = _check_sigma(sigma)
    g = as_generator(generator)
    if x.is_complex():
        n = complex_gaussian_noise(x.shape, sigma, g)
    else:
        n = _randn(x.shape, g) * sigma
    return x + n.to(device=x.device, dtype=x.dtype)


def add_rician_noise(mag: torch.Tensor, sigma: float, generator: GeneratorLike = None) -> torch.Tensor:
    """Rician noise on a magnitude image: ``|mag + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``.

    This is what a magnitude image of complex data with Gaussian noise looks like: the mean is
    biased upwards at low SNR (``sigma * sqrt(pi / 2)`` where ``mag = 0``).

    Args:
        mag: real, non-negative tensor, any shape.
        sigma: per-component standard deviation.
        generator: see the module docstring.

    Returns:
        Real tensor, same shape, dtype and device as ``mag``.
    """
    if mag.is_complex():
        raise ValueError("add_rician_noise expects a real magnitude image; use add_gaussian_noise for complex data")
    sigma = _check_sigma(sigma)
    g = as_generator(generator)
    n = complex_gaussian_noise(mag.shape, sigma, g).to(mag.device)
    return (mag + n).abs().to(mag.dtype)


def rician_mean(mag: torch.Tensor, sigma: float) -> torch.Tensor:
    """``E[|mag + n1 + i n2|]``: the noise-free expectation of a Rician-noisy magnitude image.

    ``sigma sqrt(pi/2) L_{1/2}(-mag^2 / 2 sigma^2)``, written with exponentially scaled Bessel functions
    (``u = mag^2 / 4 sigma^2``: ``sigma sqrt(pi/2) ((1 + 2u) i0e(u) + 2u i1e(u))``), so it is finite at
    every SNR: ``sigma sqrt(pi / 2)`` at ``mag = 0``, tending to ``mag`` at high SNR. This is the best an
    image-to-image model that cannot predict the noise itself can reproduce of a noisy input.
    """
    sigma = _check_sigma(sigma)
    x = torch.as_tensor(mag, dtype=torch.float64)
    if sigma == 0:
        return x.abs().to(torch.as_tensor(mag).dtype)
    u = x.square() / (4 * sigma**2)
    m = sigma * math.sqrt(math.pi / 2) * ((1 + 2 * u) * torch.special.i0e(u) + 2 * u * torch.special.i1e(u))
    return m.to(torch.as_tensor(mag).dtype)


def smooth_random_phase(
    shape_xyz,
    generator: GeneratorLike = None,
    max_phase: float = math.pi,
    cutoff: float = 1.0,
) -> torch.Tensor:
    """Smooth random phase map, so that simulated k-space is not that of a real-valued image.

    Images simulated from magnitude data have Hermitian-symmetric k-space, which real acquisitions
    never have; training or testing on it overstates what reconstruction can do (Shimron et al.,
    PNAS 2022, "implicit data crimes"). This draws white Gaussian noise, low-pass filters it with a
    Gaussian of std ``cutoff`` cycles per field of view in k-space (so the smoothness relative to the
    FOV is independent of the grid size), and rescales it so that its largest magnitude is exactly
    ``max_phase``. Use as ``x = mag * torch.exp(1j * phase)``.

    Args:
        shape_xyz: ``(X, Y, Z)``.
        generator: see the module docstring.
        max_phase: half-range of the phase in radians (> 0); values lie in ``[-max_phase, max_phase]``.
        cutoff: k-space Gaussian std in cycles per FOV (> 0); the default 1 gives one or two smooth
            lobes across the FOV (largest step about 0.3 rad per voxel on a 64^3 grid with max_phase=pi).

    Returns:
        float32 ``(X, Y, Z)`` phase in radians, on the generator's device.
    """
    shape = tuple(int(s) for s in shape_xyz)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape_xyz must be three positive ints; got {shape_xyz}")
    if not (max_phase > 0 and cutoff > 0):
        raise ValueError(f"max_phase and cutoff must be > 0; got {max_phase}, {cutoff}")
    g = as_generator(generator)
    white = _randn(shape, g)
    device = white.device
    axes = [torch.arange(n, device=device, dtype=torch.float32) - n // 2 for n in shape]
    kx, ky, kz = torch.meshgrid(*axes, indexing="ij")
    lowpass = torch.exp(-0.5 * (kx**2 + ky**2 + kz**2) / cutoff**2)
    field = ifftnc(fftnc(white.to(torch.complex64)) * lowpass).real
    peak = field.abs().max()
    if peak == 0:  # only for degenerate 1-voxel grids
        return torch.zeros(shape, dtype=torch.float32, device=device)
    return (field * (max_phase / peak)).clamp(-max_phase, max_phase).to(torch.float32)


def _robust_std(v: np.ndarray) -> float:
    """Std of zero-mean Gaussian samples from the median absolute value (robust to a little signal)."""
    return float(1.482602 * np.median(np.abs(v))) if v.size else 0.0


def estimate_kspace_noise(kspace: np.ndarray, mask: np.ndarray, fraction: float = 0.05) -> float:
    """Noise std per real / imaginary component from the outermost sampled k-space.

    The sampled entries farthest from the k-space centre (the outermost ``fraction`` of them by
    normalised radius, 1 being the edge of each axis) carry the least signal; the robust
    (median-based) std of their real and imaginary parts estimates the noise. Residual signal biases
    it upwards: on the simulated 2 mm MNI template (8 coils, R=4) it gave 0.0075 for a true 0.005 and
    0.021 for 0.02; sharp-edged phantoms are worse. Prefer the file's ``noise_std`` when it exists.

    Args:
        kspace: complex (C, X, Y, Z), centred convention (DC at ``n // 2``), zeros where unsampled.
        mask: 0/1 array broadcastable to (X, Y, Z), typically (1, Y, Z).
        fraction: share of the sampled entries (the outermost) used, in (0, 1].

    Returns:
        The estimated sigma (>= 0) in k-space units (0 when nothing is sampled).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = np.asarray(kspace)
    shape = k.shape[1:]
    sampled = np.broadcast_to(np.asarray(mask) != 0, shape)
    axes = [((np.arange(n) - n // 2) / max(n / 2, 1)) ** 2 for n in shape]
    radius = np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    valid = radius[sampled]
    if valid.size == 0:
        return 0.0
    pick = sampled & (radius >= np.quantile(valid, 1 - fraction))
    v = k[:, pick]
    return _robust_std(np.concatenate([v.real.ravel(), v.imag.ravel()]))


def estimate_image_noise(volume: np.ndarray) -> float:
    """Gaussian noise std of a real image, scikit-image ``estimate_sigma`` (wavelet MAD).

    For Rician (magnitude) noise this is close to the underlying Gaussian sigma where the signal is
    well above the noise.

    Args:
        volume: real (X, Y, Z) image (any N-D array works); cast to float32 first.

    Returns:
        The estimated sigma (>= 0) in the image's units.
    """
    from skimage.restoration import estimate_sigma

    return float(estimate_sigma(np.asarray(volume, np.float32), channel_axis=None))


def estimate_rician_noise(volume: np.ndarray, snr: float = 5.0) -> float:
    """Gaussian noise std of a magnitude (Rician) image, from its tissue only.

    :func:`estimate_image_noise` pools every voxel, and in a magnitude image's air the noise is Rayleigh, with
    0.66 sigma of spread instead of sigma: on a head in its field of view it returns ~0.7-0.8 of the true sigma. Here
    the wavelet MAD (scikit-image's, the finest diagonal band of a db2 transform) is taken only where the
    approximation band is above ``snr`` times the running estimate (twice, starting from scikit-image's), one
    coefficient in from the edge of the head (the edge's steps are not noise) and :data:`_BORDER` in from the volume's
    faces, where Rician noise is Gaussian; within a few percent of the true sigma on synthetic heads, brains and parts
    of brains with tissue to their faces (counting the faces read those 15% low).

    Args:
        volume: real (X, Y, Z) magnitude image.
        snr: the signal level, in sigmas, from which a voxel counts as tissue.

    Returns:
        The estimated sigma (>= 0) in the image's units; scikit-image's where too few voxels are tissue.
    """
    import pywt
    from scipy import ndimage

    vol = np.asarray(volume, np.float32)
    sigma = estimate_image_noise(vol)
    bands = pywt.dwtn(vol, "db2")
    detail, level = np.abs(bands["d" * vol.ndim]), bands["a" * vol.ndim] / 2 ** (vol.ndim / 2)
    inner = np.zeros(detail.shape, bool)  # the border's coefficients see the mirrored copy: less noise than noise
    inner[(slice(_BORDER, -_BORDER),) * vol.ndim] = True
    for _ in range(2):
        tissue = ndimage.binary_erosion(level > snr * sigma) & inner  # not the edge between the head and the air
        if tissue.sum() < 100:
            break
        sigma = float(np.median(detail[tissue]) / 0.6745)
    return sigma
