"""Image-domain degradations: thick slices (slice averaging) and the geometry that goes with them.

Denoising uses :class:`ldp_med.physics.operators.DenoiseOperator` (``A = I``).

Slice-thickness model: a thick-slice acquisition is modelled as the mean of ``factor`` consecutive
thin slices along one spatial axis. The thick-slice grid has the same extent as the thin one: its
voxel ``j`` along ``axis`` covers thin voxels ``[j * factor, (j + 1) * factor)`` and its centre
is the mean of their centres, which is what :func:`coarse_affine` encodes.
"""

from __future__ import annotations

import numpy as np
import torch

from ldp_med.physics.operators import Lam, LinearOperator, check_lam


def _check_factor_axis(factor: int, axis: int) -> tuple[int, int]:
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive int; got {factor}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be a spatial axis 0, 1 or 2 (X, Y, Z); got {axis}")
    return int(factor), int(axis)


class SliceAverageOperator(LinearOperator):
    """Average blocks of ``factor`` consecutive slices along a spatial axis.

    ``A``: ``(B, X, Y, Z)`` -> ``(B, X', Y', Z')`` with the ``axis`` size divided by ``factor``
    (each coarse slice is the mean of its block). ``A_adjoint`` copies each coarse slice divided by
    ``factor`` to every thin slice of its block, the exact adjoint of ``A``. Works on real or complex
    tensors. Since ``A A^H = I / factor``, ``dc_solve`` has a closed form (Woodbury).

    Args:
        factor: block length (>= 1).
        axis: spatial axis 0, 1 or 2 (X, Y, Z), i.e. tensor dim ``axis + 1``.
    """

    def __init__(self, factor: int, axis: int):
        self.factor, self.axis = _check_factor_axis(factor, axis)

    @property
    def _dim(self) -> int:
        return self.axis + 1

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Block means along ``axis``.

        Args:
            x: ``(B, X, Y, Z)`` real or complex; its ``axis`` size must be a multiple of ``factor``.

        Returns:
            ``(B, ...)`` with the ``axis`` size divided by ``factor``, same dtype.
        """
        if x.ndim != 4:
            raise ValueError(f"expected (B, X, Y, Z); got {tuple(x.shape)}")
        n = x.shape[self._dim]
        if n % self.factor:
            raise ValueError(f"size {n} along axis {self.axis} is not a multiple of factor {self.factor}")
        return x.unflatten(self._dim, (n // self.factor, self.factor)).mean(dim=self._dim + 1)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Spread each coarse slice, divided by ``factor``, over its block.

        Args:
            y: ``(B, X', Y', Z')`` real or complex (coarse along ``axis``).

        Returns:
            ``(B, X, Y, Z)`` with the ``axis`` size multiplied by ``factor``.
        """
        if y.ndim != 4:
            raise ValueError(f"expected (B, X, Y, Z); got {tuple(y.shape)}")
        return torch.repeat_interleave(y, self.factor, dim=self._dim) / self.factor

    def dc_solve(self, y: torch.Tensor, x0: torch.Tensor, lam: Lam, n_iter: int = 10) -> torch.Tensor:
        """Closed form of ``argmin_x ||A x - y||^2 + lam ||x - x0||^2`` (``n_iter`` is ignored).

        With ``b = A^H y + lam x0`` and ``A A^H = I / factor``, Woodbury gives
        ``(A^H A + lam I)^-1 b = (b - A^H A b / (1 / factor + lam)) / lam``.

        Args:
            y: coarse measurements ``(B, X', Y', Z')``.
            x0: thin-slice estimate ``(B, X, Y, Z)``.
            lam: float > 0 or tensor broadcastable to ``x0``.
            n_iter: unused.

        Returns:
            ``(B, X, Y, Z)``, dtype of ``x0``.
        """
        lam = check_lam(lam)
        if tuple(self.A(x0).shape) != tuple(y.shape):
            raise ValueError(f"y shape {tuple(y.shape)} does not match A(x0) shape {tuple(self.A(x0).shape)}")
        b = self.A_adjoint(y) + lam * x0
        return (b - self.normal(b) / (1.0 / self.factor + lam)) / lam


def coarse_affine(affine: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Affine of the thick-slice grid made by averaging blocks of ``factor`` voxels along ``axis``.

    The ``axis`` column is scaled by ``factor`` and the origin moves to the centre of the first
    block: ``origin + affine[:3, axis] * (factor - 1) / 2``.

    Args:
        affine: ``(4, 4)`` voxel-to-world affine of the thin grid.
        factor: block length.
        axis: voxel axis 0, 1 or 2.

    Returns:
        ``(4, 4)`` float64 affine.
    """
    factor, axis = _check_factor_axis(factor, axis)
    a = np.array(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4; got {a.shape}")
    out = a.copy()
    out[:3, 3] = a[:3, 3] + a[:3, axis] * (factor - 1) / 2
    out[:3, axis] = a[:3, axis] * factor
    return out


def fine_affine(coarse: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Inverse of :func:`coarse_affine`: the thin-slice affine from the thick-slice one.

    Args:
        coarse: ``(4, 4)`` affine of the thick-slice grid.
        factor: block length.
        axis: voxel axis 0, 1 or 2.

    Returns:
        ``(4, 4)`` float64 affine.
    """
    factor, axis = _check_factor_axis(factor, axis)
    c = np.array(coarse, dtype=np.float64)
    if c.shape != (4, 4):
        raise ValueError(f"affine must be 4x4; got {c.shape}")
    out = c.copy()
    out[:3, axis] = c[:3, axis] / factor
    out[:3, 3] = c[:3, 3] - out[:3, axis] * (factor - 1) / 2
    return out


def fine_shape(coarse_shape, factor: int, axis: int) -> tuple[int, ...]:
    """Thin-grid shape: ``coarse_shape`` with the ``axis`` size multiplied by ``factor``."""
    factor, axis = _check_factor_axis(factor, axis)
    shape = [int(s) for s in coarse_shape]
    shape[axis] *= factor
    return tuple(shape)


def slice_average(volume: np.ndarray, affine: np.ndarray, factor: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulate a thick-slice volume from a thin-slice one, with its affine.

    Trailing slices that do not fill a whole block (``n % factor`` of them) are dropped, so the
    coarse grid covers the first ``factor * (n // factor)`` thin slices; upsample back to
    ``fine_shape(coarse.shape, factor, axis)`` on ``fine_affine(coarse_affine, factor, axis)``.

    Args:
        volume: ``(X, Y, Z)`` or ``(X, Y, Z, ...)`` real or complex array.
        affine: ``(4, 4)`` voxel-to-world affine of ``volume``.
        factor: block length.
        axis: voxel axis 0, 1 or 2.

    Returns:
        ``(coarse, coarse_affine)``: block means (float32, or complex64 for complex input) and the
        thick-slice affine.
    """
    factor, axis = _check_factor_axis(factor, axis)
    v = np.asarray(volume)
    if v.ndim < 3:
        raise ValueError(f"volume must have at least 3 dims (X, Y, Z); got {v.shape}")
    n = v.shape[axis] // factor
    if n == 0:
        raise ValueError(f"size {v.shape[axis]} along axis {axis} is smaller than factor {factor}")
    v = np.take(v, np.arange(n * factor), axis=axis)
    v = v.reshape(v.shape[:axis] + (n, factor) + v.shape[axis + 1 :]).mean(axis=axis + 1)
    dtype = np.complex64 if np.iscomplexobj(v) else np.float32
    return v.astype(dtype), coarse_affine(affine, factor, axis)
