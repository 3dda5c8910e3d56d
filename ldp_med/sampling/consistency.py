"""Data-consistency rules: small objects that pull a prior estimate toward the measurements.

A rule holds an operator ``A`` (:mod:`ldp_med.physics`), the measurements ``y`` and a weight ``lam``,
and maps a prior estimate on the *acquisition grid* to

    argmin_x ||A x - y||^2 + lam ||x - x_prior||^2

with ``operator.dc_solve`` (closed forms where the operator has one, else ``n_iter`` conjugate-gradient
iterations started from ``x_prior``, which also keeps the solution near the prior: DDS, Chung et al.,
ICLR 2024). Images are batched ``(B, X, Y, Z)``; ``y`` has batch 1 (one acquisition) and is broadcast
over the batch of posterior samples.

- :class:`ImageDC`: real-valued problems (denoise, slice-thickness super-resolution).
- :class:`KSpaceDC`: Cartesian MRI. The prior gives a magnitude only, so the rule carries a phase
  estimate per sample (the smoothed phase of the zero-filled image, then of each DC solution) and
  applies DC to ``|x_prior| * exp(i phase)``.

The weight follows the noise level, :func:`dc_weight`; the noise level comes from the file
(``noise_std``) or from the data (:func:`ldp_med.physics.noise.estimate_kspace_noise`,
:func:`ldp_med.physics.noise.estimate_image_noise`).
"""

from __future__ import annotations

import math

import torch
from monai.networks.layers import GaussianFilter

from ldp_med.physics.mri import MRIOperator
from ldp_med.physics.operators import LinearOperator, check_lam

__all__ = [
    "dc_weight",
    "smooth_phase",
    "ImageDC",
    "KSpaceDC",
]


def dc_weight(noise_std: float, signal_scale: float, prior_error: float = 0.03, lam_scale: float = 1.0,
              floor: float = 1e-3) -> float:
    """The data-consistency weight ``lam`` of ``||A x - y||^2 + lam ||x - x_prior||^2``.

    MAP reading: with measurement noise of std ``sigma`` per component and a prior estimate whose
    error has std ``tau = prior_error * signal_scale`` per voxel, the weights are ``1 / sigma^2`` and
    ``1 / tau^2``, so ``lam = (sigma / tau)^2``. Noisier data gives a larger ``lam`` (trust the prior
    more, do not fit the noise); clean data gives a small one (hard data consistency). ``floor``
    keeps ``lam > 0`` for noiseless data, where the solve must stay well posed.

    Args:
        noise_std: std of the measurement noise (per real / imaginary component), in the units of
            ``y`` (k-space and image noise agree under the unitary FFT). 0 for noiseless data.
        signal_scale: the image's intensity scale in the same units (e.g. its 99.5th percentile).
        prior_error: assumed relative error of the prior estimate (a fraction of ``signal_scale``).
        lam_scale: multiplies the result (the user's knob, ``PosteriorConfig.dc_lam``).
        floor: smallest ``lam / lam_scale``.

    Returns:
        ``lam_scale * max((noise_std / (prior_error * signal_scale))^2, floor)``.

    Raises:
        ValueError: for negative / non-finite noise, or non-positive scale, error, lam_scale or floor.
    """
    values = dict(noise_std=noise_std, signal_scale=signal_scale, prior_error=prior_error, lam_scale=lam_scale, floor=floor)
    for name, v in values.items():
        if not math.isfinite(float(v)) or v < 0 or (v == 0 and name != "noise_std"):
            raise ValueError(f"{name} must be finite and {'>= 0' if name == 'noise_std' else '> 0'}, got {v}")
    ratio = float(noise_std) / (float(prior_error) * float(signal_scale))
    return float(lam_scale) * max(ratio * ratio, float(floor))


def smooth_phase(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The phase of a complex image after Gaussian smoothing of its real and imaginary parts.

    Smoothing the complex image (not the angle) weights the phase by the magnitude, so background
    noise does not leak into it, and phase wraps are handled naturally. One sample at a time: the
    filter's padded copies of 8 samples of a 1 mm head were the DDS steps' peak memory.

    Args:
        x: complex (B, X, Y, Z).
        sigma: Gaussian std in voxels (0: no smoothing).

    Returns:
        float32 (B, X, Y, Z) phase in radians.
    """
    if sigma <= 0:
        return torch.angle(x).float()
    smooth = GaussianFilter(spatial_dims=3, sigma=float(sigma)).to(x.device)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for b in range(len(x)):
        ri = smooth(torch.stack([x[b].real, x[b].imag]).float()[None])[0]
        out[b] = torch.atan2(ri[1], ri[0])
    return out


def _batched(y: torch.Tensor, b: int) -> torch.Tensor:
    return y if y.shape[0] == b else y.expand(b, *y.shape[1:])


class ImageDC:
    """Data consistency for a real-valued image-domain operator (denoise, slice averaging).

    Args:
        operator: a :class:`LinearOperator` acting on real (B, X, Y, Z) images.
        y: measurements (1 or B, ...), real, in acquisition units.
        lam: weight of the proximity term (> 0), e.g. from :func:`dc_weight`.
        n_iter: CG iterations (ignored by operators with a closed form).
    """

    def __init__(self, operator: LinearOperator, y: torch.Tensor, lam: float, n_iter: int = 5):
        self.operator = operator
        self.y = y
        self.lam = check_lam(lam)
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        self.n_iter = int(n_iter)

    def reset(self) -> None:
        """Forget per-run state (none for real images); the sampler calls it before each run."""

    def __call__(self, x_prior: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """``argmin_x ||A x - y||^2 + lam ||x - x_prior||^2``.

        Args:
            x_prior: real (B, X, Y, Z) on the acquisition grid.
            n_iter: CG iterations for this call (default: the rule's).

        Returns:
            Real (B, X, Y, Z).
        """
        y = _batched(self.y.to(x_prior.device), x_prior.shape[0])
        return self.operator.dc_solve(y, x_prior, self.lam, self.n_iter if n_iter is None else int(n_iter))

    def complex_image(self, x: torch.Tensor, sample: int | None = None) -> torch.Tensor:
        """The image the operator sees: ``x`` itself (real problems carry no phase)."""
        return x

    def solve(self, x_prior: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """The DC solution as the operator sees it (real here, complex for k-space)."""
        return self(x_prior, n_iter)

    def close(self, x: torch.Tensor, n_iter: int, solve: bool = True) -> torch.Tensor:
        """The sampler's last step: the DC solution of ``x`` (``solve``) or ``x`` as the operator sees it."""
        return self.solve(x, n_iter) if solve else self.complex_image(x)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``A x - y`` for a real (B, X, Y, Z) image; differentiable."""
        return self.operator.A(x) - self.y.to(x.device)

    def residual_norm(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) Euclidean norms of ``A x - y`` per sample."""
        return self.residual(x).flatten(1).norm(dim=1)


class KSpaceDC(ImageDC):
    """Data consistency for Cartesian MRI with a magnitude-only prior and a carried phase estimate.

    The DC solve is applied to ``|x_prior| * exp(i phase)``; its complex solution updates the phase
    (Gaussian-smoothed, ``phase_sigma`` voxels) and its magnitude is returned to the sampler.

    Args:
        operator: :class:`MRIOperator` (single or multi-coil).
        y: k-space (1, C, X, Y, Z) complex64.
        lam: proximity weight (> 0).
        n_iter: CG iterations (multi-coil; single-coil has a closed form).
        phase: initial phase (1 or B, X, Y, Z) in radians; default: the smoothed phase of the
            zero-filled image ``A^H y``.
        phase_sigma: smoothing of the phase estimates, in voxels.
        update_phase: update the phase from each DC solution (else keep the initial one).
    """

    def __init__(self, operator: MRIOperator, y: torch.Tensor, lam: float, n_iter: int = 5,
                 phase: torch.Tensor | None = None, phase_sigma: float = 1.5, update_phase: bool = True):
        super().__init__(operator, y.to(torch.complex64), lam, n_iter)
        self.phase_sigma = float(phase_sigma)
        self.update_phase = bool(update_phase)
        if phase is None:
            phase = smooth_phase(operator.A_adjoint(self.y), self.phase_sigma)
        self.initial_phase = phase.float()
        self.phase = self.initial_phase

    def reset(self) -> None:
        """Go back to the initial phase estimate (called at the start of every sampler run)."""
        self.phase = self.initial_phase

    def complex_image(self, x: torch.Tensor, sample: int | None = None) -> torch.Tensor:
        """``|x| * exp(i phase)``: complex64 (B, X, Y, Z) from a magnitude (B, X, Y, Z); with ``sample``, ``x`` is
        that one sample (1, X, Y, Z) and takes its own phase estimate."""
        phase = self.phase.to(x.device)
        if sample is not None and len(phase) > 1:
            phase = phase[sample : sample + 1]
        return torch.polar(x.abs().float(), phase.expand_as(x).contiguous())

    def solve(self, x_prior: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """The complex DC solution (B, X, Y, Z) for the magnitude ``x_prior``; updates the phase."""
        x0 = self.complex_image(x_prior)
        y = _batched(self.y.to(x0.device), x0.shape[0])
        x = self.operator.dc_solve(y, x0, self.lam, self.n_iter if n_iter is None else int(n_iter))
        if self.update_phase:
            self.phase = smooth_phase(x.detach(), self.phase_sigma)
        return x

    def __call__(self, x_prior: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """Magnitude (B, X, Y, Z) of the DC solution of ``|x_prior| exp(i phase)``."""
        return self.solve(x_prior, n_iter).abs()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``A(|x| exp(i phase)) - y`` (complex); a complex ``x`` is used as it is. Differentiable."""
        xc = x if x.is_complex() else self.complex_image(x)
        return self.operator.A(xc) - self.y.to(x.device)
