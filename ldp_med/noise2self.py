"""Self-supervised denoising of one noisy volume: a blind-spot network trained on the volume itself (Noise2Self).

Noise that is independent from voxel to voxel cannot be predicted from a voxel's neighbours, the signal largely can.
A network that sees every voxel's neighbourhood *without the voxel itself* and is trained to predict the noisy value
therefore learns the clean value: ``E (f(y_N) - y)^2 = E (f(y_N) - x)^2 + sigma^2`` (Batson & Royer, "Noise2Self:
blind denoising by self-supervision", ICML 2019). Here ``f`` is a per-voxel MLP on the 5x5x5 neighbourhood (the
centre left out), centred on the neighbourhood's mean and scaled by its spread, as :mod:`ldp_med.selfsim` does for
super-resolution, so it trains in seconds on two cores. The blind-spot estimate ``mu`` throws the voxel's own value
away; it is put back where it carries information: ``mu + w (y - mu)``, ``w = max(0, 1 - sigma^2 / v)``, ``v`` the
local mean (3x3x3) of ``(y - mu)^2`` (a Wiener weight: where the residual is no larger than the noise, it is noise).
One slice in 5 is held out of the training to pick the best step. No data outside the input is used.
"""

from __future__ import annotations

import numpy as np
import torch

from ldp_med.selfsim import mlp, train_held_out

__all__ = ["noise2self_denoise"]

_MAX_TEST = 50_000  # held-out rows scored (a random subset beyond this)
_MAX_TRAIN = 2_000_000  # training rows held (1 GB; a random subset beyond this: a 1 mm head has 10 M)
_HOLD_OUT = 5  # one slice in this many (along the last axis) is held out of the training
_CHUNK = 65536  # rows per inference batch


class _Neighbourhoods:
    """The neighbourhood of any flat voxel of ``x`` without the voxel itself, reflected at the edges: rows of
    ``(2c+1)^3 - 1`` values gathered from one padded copy in one indexing step (no per-offset copies)."""

    def __init__(self, x: np.ndarray, context: int):
        n = 2 * context + 1
        self.shape = x.shape
        self.padded = np.pad(x, context, mode="reflect" if min(x.shape) > context else "edge")
        offsets = np.array([(a, b, c) for a in range(n) for b in range(n) for c in range(n)
                            if (a, b, c) != (context,) * 3])
        self.offsets = np.ravel_multi_index(offsets.T, self.padded.shape)  # flat offsets from the corner voxel

    def __call__(self, index: np.ndarray) -> torch.Tensor:
        """(len(index), (2c+1)^3 - 1) float32 rows for the flat voxel indices ``index`` of ``x``."""
        corner = np.ravel_multi_index(np.unravel_index(index, self.shape), self.padded.shape)
        return torch.from_numpy(self.padded.reshape(-1)[corner[:, None] + self.offsets[None, :]])


def _predict(net: torch.nn.Module, rows: torch.Tensor, floor: float) -> torch.Tensor:
    """The net's estimate of each row's centre: rows centred on their mean, scaled by their spread (+ ``floor``)."""
    mean = rows.mean(1, keepdim=True)
    spread = rows.std(1, keepdim=True) + floor
    return net((rows - mean) / spread) * spread + mean


def noise2self_denoise(volume: np.ndarray, sigma: float, context: int = 2, hidden: int = 128, steps: int = 2000,
                       seed: int = 0, progress: bool = False, return_variance: bool = False):
    """Denoise ``volume`` with a blind-spot MLP trained on the volume itself (see the module's docstring).

    Args:
        volume: float (X, Y, Z) noisy magnitude, any units.
        sigma: the noise's Gaussian std in the volume's units (e.g. :func:`ldp_med.physics.estimate_rician_noise`).
        context: neighbourhood half-width in voxels.
        hidden: width of the MLP's two hidden layers.
        steps: Adam steps of 4096 voxels at most (25-30 s at 2000 on two cores for a 2 mm head); fewer where that
            is more than 40 passes over the training voxels (:func:`ldp_med.selfsim.train_held_out`).
        seed: seeds the training voxels and the network's initialisation.
        progress: a progress bar over the training steps.
        return_variance: also return the estimate's error variance (:func:`_with_centre`).

    Returns:
        float32 denoised volume of the same shape, >= 0 where the input is (a magnitude image); with
        ``return_variance``, (that volume, its float32 error variance map in squared units).
    """
    vol = np.asarray(volume, np.float32)
    scale = float(np.percentile(np.abs(vol), 99)) or 1.0
    x, floor = vol / scale, max(float(sigma) / scale, 1e-3)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = mlp((2 * context + 1) ** 3 - 1, 1, hidden)
    flat = x.reshape(-1)
    held = np.arange(x.size) % x.shape[-1] % _HOLD_OUT == _HOLD_OUT // 2  # the last axis's index of each flat voxel
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    if len(test) > _MAX_TEST:
        test = np.sort(np.random.default_rng(seed).choice(test, _MAX_TEST, replace=False))
    if len(train) > _MAX_TRAIN:
        train = np.sort(np.random.default_rng(seed + 1).choice(train, _MAX_TRAIN, replace=False))
    neighbours = _Neighbourhoods(x, context)
    rows, target = neighbours(train), torch.from_numpy(flat[train, None])
    test_rows, test_target = neighbours(test), torch.from_numpy(flat[test, None])

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return torch.mean((_predict(net, rows[batch], floor) - target[batch]) ** 2)

    train_held_out(net, loss, len(train), lambda: torch.mean((_predict(net, test_rows, floor) - test_target) ** 2),
                   steps, gen, "noise2self", progress)
    del rows, target, test_rows
    mu = np.empty(x.size, np.float32)
    with torch.no_grad():
        for start in range(0, x.size, _CHUNK):
            index = np.arange(start, min(start + _CHUNK, x.size))
            mu[index] = _predict(net, neighbours(index), floor)[:, 0].numpy()
    est, var = _with_centre(x, mu.reshape(x.shape), float(sigma) / scale)
    est = np.maximum(scale * est, min(float(vol.min()), 0.0)).astype(np.float32)  # a magnitude image stays >= 0
    return (est, (scale**2 * var).astype(np.float32)) if return_variance else est


def _with_centre(x: np.ndarray, mu: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """``mu + w (x - mu)`` with the Wiener weight ``w = max(0, 1 - sigma^2 / v)``, ``v`` the 3x3x3 mean of the
    squared residual: the voxel's own value where the residual is more than the noise can explain; and that
    estimate's error variance ``w sigma^2`` (``(1 - w)^2 e + w^2 sigma^2`` with ``e = v - sigma^2``, the blind-spot
    estimate's own squared error: 0 where the residual is all noise, up to ``sigma^2`` where the voxel is kept)."""
    from scipy.ndimage import uniform_filter

    r = x - mu
    v = uniform_filter(r * r, 3, mode="reflect")
    w = np.clip(1.0 - sigma**2 / np.maximum(v, 1e-12), 0.0, 1.0)
    return mu + w * r, w * sigma**2
