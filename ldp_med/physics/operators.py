"""Linear forward operators and their data-consistency solves.

Every operator is a plain object (no ``nn.Module``): ``A(x)``, ``A_adjoint(y)``, ``normal(x)`` and
``dc_solve(y, x0, lam)``, which returns

    argmin_x ||A x - y||^2 + lam ||x - x0||^2   =   (A^H A + lam I)^-1 (A^H y + lam x0).

The base class solves it by conjugate gradients (MONAI's ``ConjugateGradient``); operators whose
normal operator is diagonal in some basis override it with a closed form. Tensors are torch,
batched along dim 0; complex data is ``torch.complex64``.
"""

from __future__ import annotations

import torch
from monai.networks.layers import ConjugateGradient

Lam = float | torch.Tensor


def check_lam(lam: Lam) -> Lam:
    """Validate a data-consistency weight: a positive float or a tensor of positive values.

    Args:
        lam: float, or a tensor broadcastable against the image (e.g. shape (B, 1, 1, 1)).

    Returns:
        ``lam`` unchanged.

    Raises:
        ValueError: if any value is not finite and > 0 (lam = 0 makes the closed forms divide by
            zero and the CG system singular wherever A has a null space).
    """
    if isinstance(lam, torch.Tensor):
        if not bool(torch.isfinite(lam).all()) or not bool((lam > 0).all()):
            raise ValueError("lam must be finite and > 0 everywhere")
    else:
        lam = float(lam)
        if not (lam > 0 and lam < float("inf")):
            raise ValueError(f"lam must be finite and > 0, got {lam}")
    return lam


class LinearOperator:
    """Base class of a linear operator ``A`` with adjoint ``A^H``.

    Subclasses implement :meth:`A` and :meth:`A_adjoint`; they may override :meth:`dc_solve`
    with a closed form. ``op(x)`` is ``op.A(x)``. ``normal_is_identity``: ``A^H A = I`` (solvers may take
    shortcuts: :func:`ldp_med.sampling.closing.closing_solve`).
    """

    normal_is_identity: bool = False

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (operator notation)
        """Apply the forward operator."""
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Apply the adjoint operator (the conjugate transpose of :meth:`A`)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the normal operator ``A^H A``; same shape as ``x``."""
        return self.A_adjoint(self.A(x))

    def release(self) -> None:
        """Drop what the operator keeps between calls to be faster (nothing here); the next call rebuilds it."""

    def dc_solve(self, y: torch.Tensor, x0: torch.Tensor, lam: Lam, n_iter: int = 10) -> torch.Tensor:
        """Solve ``argmin_x ||A x - y||^2 + lam ||x - x0||^2``.

        Default: ``n_iter`` conjugate-gradient iterations (MONAI ``ConjugateGradient``) on
        ``(A^H A + lam I) x = A^H y + lam x0``, started from ``x0``. MONAI's CG takes its inner
        products over the whole tensor, so the batch is solved as one block-diagonal system with
        shared step sizes: the fixed point is the exact per-sample solution, but convergence is
        governed by the joint spectrum of the batch (acceptable here; every sample shares ``A``'s
        structure). CG also stops early once the squared residual norm drops below 1e-10.
        Differentiable through autograd (the iterations are unrolled).

        Args:
            y: measurements, shape of ``A(x0)``.
            x0: prior estimate / initial guess, shape of the image.
            lam: weight of the proximity term, float > 0 or a tensor broadcastable to ``x0``.
            n_iter: CG iterations (ignored by closed-form overrides).

        Returns:
            The minimiser, same shape and dtype as ``x0``.
        """
        lam = check_lam(lam)
        if n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {n_iter}")
        rhs = self.A_adjoint(y) + lam * x0

        def system(v: torch.Tensor) -> torch.Tensor:
            return self.normal(v) + lam * v

        return ConjugateGradient(system, int(n_iter))(x0.clone(), rhs)


class DenoiseOperator(LinearOperator):
    """Identity forward model for denoising: ``A = A^H = I`` on any tensor, real or complex.

    The data-consistency solve is the closed form ``(y + lam x0) / (1 + lam)``.
    """

    normal_is_identity = True

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Return ``x`` unchanged (any shape, real or complex)."""
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Return ``y`` unchanged."""
        return y

    def dc_solve(self, y: torch.Tensor, x0: torch.Tensor, lam: Lam, n_iter: int = 10) -> torch.Tensor:
        """Closed form ``(y + lam x0) / (1 + lam)``; ``n_iter`` is ignored.

        Args:
            y: noisy measurement, same shape as ``x0``.
            x0: prior estimate.
            lam: float > 0 or tensor broadcastable to ``x0``.
            n_iter: unused (kept for a uniform signature).

        Returns:
            Tensor shaped like ``x0``.
        """
        lam = check_lam(lam)
        if y.shape != x0.shape:
            raise ValueError(f"y shape {tuple(y.shape)} does not match x0 shape {tuple(x0.shape)}")
        return (y + lam * x0) / (1 + lam)
