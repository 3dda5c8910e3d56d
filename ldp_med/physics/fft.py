"""The only centred, orthonormal FFTs in ldp-med.

Convention: k-space centre (DC) sits at index ``n // 2`` on every transformed axis, image centre
likewise; ``norm="ortho"`` so that ``ifftnc(fftnc(x)) == x`` and the FFT is unitary (image-space
and k-space noise have the same standard deviation). Complex tensors are ``torch.complex64``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DIMS3 = (-3, -2, -1)


def fftnc(x: torch.Tensor, dims: Sequence[int] = DIMS3) -> torch.Tensor:
    """Centred orthonormal forward FFT over ``dims`` (default: the last three, x/y/z)."""
    dims = tuple(dims)
    x = torch.fft.ifftshift(x, dim=dims)
    x = torch.fft.fftn(x, dim=dims, norm="ortho")
    return torch.fft.fftshift(x, dim=dims)


def ifftnc(k: torch.Tensor, dims: Sequence[int] = DIMS3) -> torch.Tensor:
    """Centred orthonormal inverse FFT over ``dims`` (default: the last three, x/y/z)."""
    dims = tuple(dims)
    k = torch.fft.ifftshift(k, dim=dims)
    k = torch.fft.ifftn(k, dim=dims, norm="ortho")
    return torch.fft.fftshift(k, dim=dims)
