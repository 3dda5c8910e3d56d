"""Cartesian MRI forward model, single- and multi-coil.

Conventions (see ``ldp_med.physics.fft``): image ``x`` is ``(B, X, Y, Z)`` complex64, k-space
``y`` is ``(B, C, X, Y, Z)`` complex64 with the DC sample at index ``n // 2`` on every axis and a
unitary (orthonormal) FFT. The readout X is fully sampled; the sampling mask covers the two
phase-encode axes and is stored as a real float32 tensor of shape ``(1, Y, Z)`` (or ``(X, Y, Z)``),
broadcast over X. Sensitivity maps are ``(B or 1, C, X, Y, Z)`` complex64; single-coil data is
``C = 1`` with ``maps=None`` (identity maps).
"""

from __future__ import annotations

import numpy as np
import torch

from ldp_med.physics.fft import DIMS3, fftnc, ifftnc
from ldp_med.physics.operators import Lam, LinearOperator, check_lam

#: Multi-coil DC solves take as many samples at a time as have coil images (complex64) within this many bytes.
DC_BATCH_BYTES = 2**29


def _as_tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or np.ndarray, got {type(a).__name__}")
    return a


def as_mask_tensor(mask) -> torch.Tensor:
    """Validate a sampling mask and return it as a float32 tensor of shape ``(1, Y, Z)`` or ``(X, Y, Z)``.

    Args:
        mask: tensor or array of shape ``(Y, Z)``, ``(1, Y, Z)`` or ``(X, Y, Z)`` with values in {0, 1}
            (bool, int or float).

    Raises:
        ValueError: wrong number of dimensions, complex dtype, or values other than 0 and 1.
    """
    mask = _as_tensor(mask, "mask")
    if mask.is_complex():
        raise ValueError("mask must be real (values 0/1), got a complex tensor")
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ValueError(f"mask must have shape (Y, Z), (1, Y, Z) or (X, Y, Z); got {tuple(mask.shape)}")
    mask = mask.to(torch.float32)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask values must be 0 or 1")
    return mask


def _check_maps(maps) -> torch.Tensor:
    maps = _as_tensor(maps, "maps")
    if not maps.is_complex():
        raise ValueError(f"maps must be complex (B or 1, C, X, Y, Z); got dtype {maps.dtype}")
    if maps.ndim != 5:
        raise ValueError(f"maps must have 5 dims (B or 1, C, X, Y, Z); got shape {tuple(maps.shape)}")
    return maps.to(torch.complex64)


class MRIOperator(LinearOperator):
    """Undersampled Cartesian MRI: ``A(x) = mask * FFT(maps * x)`` per coil.

    ``A``: ``(B, X, Y, Z)`` complex -> ``(B, C, X, Y, Z)`` complex (``C = 1`` without maps).
    ``A_adjoint``: ``y -> sum_c conj(maps_c) * IFFT(mask * y_c)``, ``(B, C, X, Y, Z) -> (B, X, Y, Z)``.
    The mask and maps move to the input's device on first use (or call :meth:`to`).

    Args:
        mask: binary sampling mask over the phase-encode axes, shape ``(Y, Z)``, ``(1, Y, Z)`` or
            ``(X, Y, Z)`` (see :func:`as_mask_tensor`).
        maps: coil sensitivities ``(B or 1, C, X, Y, Z)`` complex, or None for single-coil
            (identity maps).

    Raises:
        ValueError: invalid mask/maps, or mask and maps disagree on the (X, Y, Z) grid.
    """

    def __init__(self, mask, maps=None):
        self.mask = as_mask_tensor(mask)
        self.maps = None if maps is None else _check_maps(maps)
        if self.maps is not None:
            self._check_grid(self.maps.shape[-3:], "maps")

    @property
    def n_coils(self) -> int:
        """Number of coils C (1 for single-coil)."""
        return 1 if self.maps is None else int(self.maps.shape[1])

    def _check_grid(self, shape_xyz, what: str) -> None:
        mx, my, mz = self.mask.shape
        x, y, z = (int(s) for s in shape_xyz)
        if (my, mz) != (y, z) or mx not in (1, x):
            raise ValueError(
                f"{what} grid (X, Y, Z) = {(x, y, z)} does not match the mask shape {(mx, my, mz)} "
                "(mask must be (1 or X, Y, Z))"
            )
        if self.maps is not None and tuple(self.maps.shape[-3:]) != (x, y, z):
            raise ValueError(
                f"{what} grid (X, Y, Z) = {(x, y, z)} does not match the maps grid {tuple(self.maps.shape[-3:])}"
            )

    def _check_batch(self, b: int, what: str) -> None:
        if self.maps is not None and self.maps.shape[0] not in (1, b):
            raise ValueError(f"{what} batch {b} does not match the maps batch {self.maps.shape[0]} (must be 1 or B)")

    def to(self, device: torch.device | str) -> MRIOperator:
        """Move the mask and maps to ``device`` (in place) and return ``self``."""
        self.mask = self.mask.to(device)
        if self.maps is not None:
            self.maps = self.maps.to(device)
        return self

    # the operands follow the data; moved once and kept there, not copied on every call
    def _mask_on(self, t: torch.Tensor) -> torch.Tensor:
        if self.mask.device != t.device:
            self.mask = self.mask.to(t.device)
        return self.mask

    def _maps_on(self, t: torch.Tensor) -> torch.Tensor:
        if self.maps.device != t.device:
            self.maps = self.maps.to(t.device)
        return self.maps

    def check_image(self, x: torch.Tensor) -> torch.Tensor:
        """Validate an image ``(B, X, Y, Z)`` and return it as complex64 (real input is promoted)."""
        if x.ndim != 4:
            raise ValueError(f"image must have shape (B, X, Y, Z); got {tuple(x.shape)}")
        self._check_grid(x.shape[-3:], "image")
        self._check_batch(x.shape[0], "image")
        return x.to(torch.complex64)

    def check_kspace(self, y: torch.Tensor) -> torch.Tensor:
        """Validate k-space ``(B, C, X, Y, Z)`` and return it as complex64."""
        if y.ndim != 5:
            raise ValueError(f"k-space must have shape (B, C, X, Y, Z); got {tuple(y.shape)}")
        if y.shape[1] != self.n_coils:
            raise ValueError(f"k-space has {y.shape[1]} coils but the operator has {self.n_coils}")
        self._check_grid(y.shape[-3:], "k-space")
        self._check_batch(y.shape[0], "k-space")
        return y.to(torch.complex64)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Forward model.

        Args:
            x: image ``(B, X, Y, Z)``, complex64 (real is promoted).

        Returns:
            Masked multi-coil k-space ``(B, C, X, Y, Z)`` complex64 (``C = 1`` without maps).
        """
        x = self.check_image(x)[:, None]
        if self.maps is not None:
            x = self._maps_on(x) * x
        return self._mask_on(x) * fftnc(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Adjoint: coil-combined zero-filled image.

        Args:
            y: k-space ``(B, C, X, Y, Z)`` complex64.

        Returns:
            Image ``(B, X, Y, Z)`` complex64.
        """
        y = self.check_kspace(y)
        img = ifftnc(self._mask_on(y) * y)
        if self.maps is None:
            return img[:, 0]
        return (self._maps_on(img).conj() * img).sum(dim=1)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^H A x`` with two image shifts instead of four k-space shifts per coil.

        ``ifftnc(M fftnc(v)) = fftshift(ifftn(M' fftn(ifftshift(v))))`` with ``M' = ifftshift(M)``, and the
        image-side shifts commute with the coil products when the maps are shifted too (``S' = ifftshift(S)``),
        so the inner loop is pure FFTs and products on pre-shifted operands (cached per device). Along an axis
        where the mask is constant (size 1: a fully sampled readout) the FFT pair cancels, so neither the FFTs nor
        the shifts run along it. One coil-sized array is allocated and every step after it works in place (a
        1 mm head's 8 coils: 0.8 GB once instead of four times); under autograd the FFTs allocate (``out=`` is not
        differentiable), so ``dc_solve`` stays differentiable.
        """
        x = self.check_image(x)
        mask, maps, maps_conj, dims = self._shifted_on(x)
        v = torch.fft.ifftshift(x, dim=dims)[:, None]  # a new array: ``x`` itself is never written
        if maps is not None:
            v = maps * v
        out = None if torch.is_grad_enabled() and v.requires_grad else v
        v = torch.fft.fftn(v, dim=dims, norm="ortho", out=out)
        v = torch.fft.ifftn(v.mul_(mask), dim=dims, norm="ortho", out=out)
        v = v[:, 0] if maps is None else v.mul_(maps_conj).sum(dim=1)
        return torch.fft.fftshift(v, dim=dims)

    def release(self) -> None:
        """Drop the shifted mask and maps (and their conjugate) that :meth:`normal` keeps: three coil-sized arrays,
        0.9 GB for 8 coils of a 1 mm head, rebuilt by the next call in a fraction of a second."""
        self._shifted = None

    def _shifted_on(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None,
                                                    tuple[int, ...]]:
        """The ifftshifted mask and maps (and the maps' conjugate) on ``t``'s device and the axes the mask varies
        along (the FFT axes of :meth:`normal`), recomputed whenever ``mask`` or ``maps`` is replaced."""
        mask = self._mask_on(t)
        maps = None if self.maps is None else self._maps_on(t)
        cached = getattr(self, "_shifted", None)
        if cached is None or cached[-2] is not mask or cached[-1] is not maps:
            dims = tuple(d for d in DIMS3 if mask.shape[d] > 1) or DIMS3
            shifted_maps = None if maps is None else torch.fft.ifftshift(maps, dim=dims)
            conj = None if maps is None else shifted_maps.conj().resolve_conj()
            self._shifted = (torch.fft.ifftshift(mask, dim=dims), shifted_maps, conj, dims, mask, maps)
        return self._shifted[:4]

    def dc_solve(self, y: torch.Tensor, x0: torch.Tensor, lam: Lam, n_iter: int = 10) -> torch.Tensor:
        """``argmin_x ||A x - y||^2 + lam ||x - x0||^2``.

        Single-coil: exact closed form in k-space (the mask is binary, so ``A^H A`` is diagonal there):
        ``x = IFFT((mask * y + lam * FFT(x0)) / (mask + lam))``. Multi-coil: ``n_iter`` CG iterations
        from ``x0`` (see :meth:`LinearOperator.dc_solve`), on as many samples at a time as have coil images within
        :data:`DC_BATCH_BYTES` (every sample of a 2 mm volume at once; 8 samples of a 1 mm head held 12 GB).

        Args:
            y: k-space ``(B, C, X, Y, Z)`` complex64.
            x0: image ``(B, X, Y, Z)`` complex64.
            lam: float > 0, or a tensor broadcastable to ``(B, X, Y, Z)`` (e.g. ``(B, 1, 1, 1)``).
            n_iter: CG iterations (multi-coil only).

        Returns:
            Image ``(B, X, Y, Z)`` complex64.
        """
        x0 = self.check_image(x0)
        y = self.check_kspace(y)
        if self.maps is not None:
            chunk = max(1, DC_BATCH_BYTES // (8 * self.n_coils * x0[0].numel()))  # samples whose coil images fit
            if len(x0) <= chunk or self.maps.shape[0] > 1:
                return super().dc_solve(y, x0, lam, n_iter)

            def part(t, i):  # a tensor with one entry per sample, cut to the chunk
                return t[i : i + chunk] if torch.is_tensor(t) and t.ndim and len(t) == len(x0) else t

            return torch.cat([super(MRIOperator, self).dc_solve(part(y, i), x0[i : i + chunk], part(lam, i), n_iter)
                              for i in range(0, len(x0), chunk)])
        lam = check_lam(lam)
        mask = self._mask_on(y)
        k = (mask * y[:, 0] + lam * fftnc(x0)) / (mask + lam)
        return ifftnc(k)


def coil_combine(images: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
    """Combine coil images.

    Args:
        images: coil images ``(B, C, X, Y, Z)`` complex.
        maps: sensitivities ``(B or 1, C, X, Y, Z)`` complex, or None.

    Returns:
        With maps: ``sum_c conj(S_c) x_c``, ``(B, X, Y, Z)`` complex64. Without: the root-sum-of-squares
        magnitude ``sqrt(sum_c |x_c|^2)``, ``(B, X, Y, Z)`` float32.
    """
    if images.ndim != 5:
        raise ValueError(f"coil images must have shape (B, C, X, Y, Z); got {tuple(images.shape)}")
    if maps is None:
        return images.abs().pow(2).sum(dim=1).sqrt().to(torch.float32)
    maps = _check_maps(maps).to(images.device)
    if maps.shape[1:] != images.shape[1:] or maps.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"maps shape {tuple(maps.shape)} does not match coil images {tuple(images.shape)}")
    return (maps.conj() * images.to(torch.complex64)).sum(dim=1)


def zero_filled(y: torch.Tensor, mask, maps: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-filled reconstruction: the coil-combined adjoint of the undersampled k-space.

    Args:
        y: k-space ``(B, C, X, Y, Z)`` complex (unsampled entries are zeroed by the mask anyway).
        mask: sampling mask, see :func:`as_mask_tensor`.
        maps: sensitivities ``(B or 1, C, X, Y, Z)`` complex, or None.

    Returns:
        ``(B, X, Y, Z)`` complex64: with maps, ``MRIOperator(mask, maps).A_adjoint(y)``; without maps
        and ``C = 1``, the single-coil adjoint (phase kept); without maps and ``C > 1``, the
        root-sum-of-squares of the coil images as a complex tensor with zero phase.
    """
    if y.ndim != 5:
        raise ValueError(f"k-space must have shape (B, C, X, Y, Z); got {tuple(y.shape)}")
    if maps is not None or y.shape[1] == 1:
        return MRIOperator(mask, maps).A_adjoint(y)
    m = as_mask_tensor(mask).to(y.device)
    if m.shape[1:] != y.shape[-2:] or m.shape[0] not in (1, y.shape[-3]):
        raise ValueError(f"k-space grid {tuple(y.shape[-3:])} does not match the mask shape {tuple(m.shape)}")
    return coil_combine(ifftnc(m * y.to(torch.complex64))).to(torch.complex64)
