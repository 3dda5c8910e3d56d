"""Self-supervised denoising of one noisy volume: a blind-spot network trained on the volume itself (Noise2Self).

Noise that is independent from voxel to voxel cannot be predicted from a voxel's neighbours, the signal largely can.
A network that sees every voxel's neighbourhood *without the voxel itself* and is trained to predict the noisy value
therefore learns the clean value: ``E (f(y_N) - y)^2 = E (f(y_N) - x)^2 + sigma^2`` (Batson & Royer, "Noise2Self:
blind denoising by self-supervision", ICML 2019). Here ``f`` is a per-voxel MLP on the 5x5x5 neighbourhood (the
centre left out) and on non-local means of the voxel computed blind (:func:`_blind_nlm`: patches compared without
the voxel, the voxel never a candidate), centred on the neighbourhood's mean and scaled by its spread, as
:mod:`ldp_med.selfsim` does for super-resolution, so it trains in seconds on two cores. The net predicts a Gaussian
for the clean value, mean ``mu`` and variance ``s2``, trained by the likelihood of the noisy value under ``N(mu, s2
+ sigma^2)`` (Laine et al., "High-quality self-supervised deep image denoising", NeurIPS 2019); the voxel's own
value, which the blind spot threw away, comes back as ``mu + w (y - mu)``, ``w`` the larger of the posterior's
weight ``s2 / (s2 + sigma^2)`` and the residual's ``max(0, 1 - sigma^2 / v)``, ``v`` the local mean of ``(y -
mu)^2`` over the widest cube (3, 5 or 7 across) that agrees with the smaller ones (:func:`_posterior`); its error
variance is ``w sigma^2``. One slice in 5 is held out of the training to pick the best step. No data outside the
input is used.
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
_SEARCH = 2  # half-width of the non-local means' search window (5x5x5 candidates)
_SLAB_VOXELS = 2**22  # voxels of the non-local means' slabs (see _blind_nlm)
_RESIDUAL_WINDOWS = (3, 5, 7)  # cube widths the residual's local mean may take (see _posterior)


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


def _blind_nlm(x: np.ndarray, sigma: float, search: int = _SEARCH) -> np.ndarray:
    """:func:`_blind_nlm_block` a slab of about :data:`_SLAB_VOXELS` at a time along the first axis, each with the
    ``search + 1`` slices on either side that its features reach: the same features to the bit (tested), in the
    per-voxel time of a 2 mm head at any size (past ~9 M voxels at once every pass slows down: a whole 256x256x192
    volume took 537 s, its slabs 99 s)."""
    halo, n = search + 1, x.shape[0]
    step = max(1, _SLAB_VOXELS // int(np.prod(x.shape[1:])))
    out = np.empty((4,) + x.shape, np.float32)
    for a in range(0, n, step):
        b = min(a + step, n)
        lo, hi = max(a - halo, 0), min(b + halo, n)
        out[:, a:b] = _blind_nlm_block(x[lo:hi], sigma, search)[:, a - lo:b - lo]
    return out


def _blind_nlm_block(x: np.ndarray, sigma: float, search: int) -> np.ndarray:
    """Non-local means of every voxel that its own value never reaches (J-invariant features for the blind spot):
    each candidate ``x(p + d)`` in the ``(2 search + 1)^3`` window, ``d != 0``, weighs ``exp(-max(D - 2 sigma^2, 0) /
    (h 2 sigma^2))`` for three filtering strengths ``h`` = 1/2, 1, 2, ``D`` the mean squared difference of the 3x3x3
    patches around ``p`` and ``p + d`` over the voxel pairs that leave ``x(p)`` out; outside the volume there is
    nothing (no padding copies the voxel back in). One candidate offset at a time over the whole volume, the patch
    sums as box sums. Returns ``(4, *x.shape)``: one mean per strength, then the best match's value."""
    r, pad = 1, search + 1
    xp = torch.from_numpy(np.pad(x.astype(np.float32), pad))
    inside = [torch.from_numpy(np.pad(np.ones(k, np.float32), pad)) for k in x.shape]
    shape = tuple(k + 2 * r for k in x.shape)  # the voxels' patches reach one voxel past the volume
    window = lambda a, d: a[tuple(slice(pad - r + o, pad - r + o + k) for o, k in zip(d, shape))]  # noqa: E731
    core = (slice(r, -r),) * 3
    base, floor = window(xp, (0, 0, 0)), 2 * sigma**2
    num = torch.zeros((3,) + x.shape)
    den = torch.zeros_like(num)
    best, best_value = torch.full(x.shape, float("inf")), torch.zeros(x.shape)
    with torch.no_grad():
        for d in np.ndindex(*(2 * search + 1,) * 3):
            d = tuple(int(o) - search for o in d)
            if d == (0, 0, 0):
                continue
            lines = [m[pad - r:pad - r + k] * m[pad - r + o:pad - r + o + k] for m, o, k in zip(inside, d, shape)]
            valid = _outer(lines)  # both voxels of a pair inside the volume
            shifted = window(xp, d)
            d2 = (base - shifted).square_().mul_(valid)
            total = _box(d2, r).sub_(d2[core])  # every pair of the two patches but (p, p + d)
            count = _outer([_box(m, r) for m in lines]).sub_(valid[core])
            if max(map(abs, d)) <= r:  # the pair (p - d, p) is in the patches too
                back = tuple(slice(r - o, r - o + k) for o, k in zip(d, x.shape))
                total.sub_(d2[back])
                count.sub_(valid[back])
            dist = total.div_(count.clamp_(min=0.5)).sub_(floor).clamp_(min=0.0)
            dist.masked_fill_(valid[core] == 0, 1e30)  # x(p + d) outside the volume: no weight
            value = shifted[core]
            best_value = torch.where(dist < best, value, best_value)
            torch.minimum(best, dist, out=best)
            w = dist.div_(-floor).exp_()  # h = 1; h = 1/2 and 2 are its square and square root
            for i, weight in enumerate((w * w, w, w.sqrt())):
                num[i].addcmul_(weight, value)
                den[i].add_(weight)
    means = torch.where(den > 0, num / den.clamp(min=1e-30), best_value)  # no candidate near: the best match
    return torch.cat([means, best_value[None]]).numpy()


def _outer(lines: list[torch.Tensor]) -> torch.Tensor:
    """The 3-D product ``a[i] b[j] c[k]`` of three 1-D tensors."""
    return lines[0][:, None, None] * lines[1][None, :, None] * lines[2][None, None, :]


def _box(a: torch.Tensor, r: int) -> torch.Tensor:
    """Sums of ``a`` over every block of 2r+1 voxels per axis that fits inside it (each axis shrinks by 2r), axis by
    axis."""
    for axis in range(a.dim()):
        n = a.shape[axis] - 2 * r
        a = sum(a.narrow(axis, o, n) for o in range(2 * r + 1))
    return a


def _normalise(rows: torch.Tensor, floor: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre ``rows`` in place on the mean of their first ``k`` values (the neighbours) and scale them by those
    values' spread (+ ``floor``): the net's input. Returns (mean, spread), each (N, 1), for :func:`_gaussian`."""
    mean = rows[:, :k].mean(1, keepdim=True)
    spread = rows[:, :k].std(1, keepdim=True).add_(floor)
    rows.sub_(mean).div_(spread)
    return mean, spread


def _gaussian(out: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The net's output on normalised rows (:func:`_normalise`) as a Gaussian for each row's clean centre in the
    volume's units, (mean, variance)."""
    return out[:, :1] * spread + mean, torch.nn.functional.softplus(out[:, 1:]) * spread**2


def _nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noisy value's negative log-likelihood under ``N(mean, var + sigma^2)`` (constants dropped)."""
    total = var + sigma**2 + 1e-12
    return torch.mean((y - mean) ** 2 / total + torch.log(total))


def noise2self_denoise(volume: np.ndarray, sigma: float, context: int = 2, hidden: int = 128, steps: int = 2000,
                       seed: int = 0, progress: bool = False, return_variance: bool = False, residual_z: float = 1.0):
    """Denoise ``volume`` with a blind-spot MLP trained on the volume itself (see the module's docstring).

    Args:
        volume: float (X, Y, Z) noisy magnitude, any units.
        sigma: the noise's Gaussian std in the volume's units (e.g. :func:`ldp_med.physics.estimate_rician_noise`).
        context: neighbourhood half-width in voxels.
        hidden: width of the MLP's two hidden layers.
        steps: Adam steps of 4096 voxels at most (30-40 s at 2000 on two cores for a 2 mm head, the non-local
            features included); fewer where that is more than 40 passes over the training voxels
            (:func:`ldp_med.selfsim.train_held_out`).
        seed: seeds the training voxels and the network's initialisation.
        progress: a progress bar over the training steps.
        return_variance: also return the estimate's error variance (:func:`_posterior`).
        residual_z: the width, in standard errors, of the intervals that decide how far the residual's local mean
            reaches (:func:`_posterior`); 0: 3x3x3 everywhere (until session 44); 1 (the default, and the config's)
            +0.15 dB inside the head on seven validation volumes, +0.05 for the prior on twelve
            (docs/tune_noise2self_residual_window.md).

    Returns:
        float32 denoised volume of the same shape, >= 0 where the input is (a magnitude image); with
        ``return_variance``, (that volume, its float32 error variance map in squared units).
    """
    vol = np.asarray(volume, np.float32)
    scale = float(np.percentile(np.abs(vol), 99)) or 1.0
    x, floor = np.ascontiguousarray(vol / scale), max(float(sigma) / scale, 1e-3)  # C order: flat indices are views
    noise = float(sigma) / scale
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    k = (2 * context + 1) ** 3 - 1
    features = torch.from_numpy(_blind_nlm(x, floor).reshape(4, -1).T.copy())
    net = mlp(k + features.shape[1], 2, hidden)
    flat = x.reshape(-1)
    held = np.arange(x.size) % x.shape[-1] % _HOLD_OUT == _HOLD_OUT // 2  # the last axis's index of each flat voxel
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    if len(test) > _MAX_TEST:
        test = np.sort(np.random.default_rng(seed).choice(test, _MAX_TEST, replace=False))
    if len(train) > _MAX_TRAIN:
        train = np.sort(np.random.default_rng(seed + 1).choice(train, _MAX_TRAIN, replace=False))
    neighbours = _Neighbourhoods(x, context)

    def rows_of(index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The net's normalised rows (neighbours then features) of the voxels ``index``, a chunk at a time, and
        their (mean, spread) (:func:`_normalise`): normalised once here, not at every step that draws them."""
        out, mean, spread = torch.empty(len(index), k + features.shape[1]), *torch.empty(2, len(index), 1)
        for start in range(0, len(index), _CHUNK):
            part, rows = index[start:start + _CHUNK], out[start:start + _CHUNK]
            rows[:, :k] = neighbours(part)
            rows[:, k:] = features[part]
            mean[start:start + len(part)], spread[start:start + len(part)] = _normalise(rows, floor, k)
        return out, mean, spread

    (rows, mean, spread), target = rows_of(train), torch.from_numpy(flat[train, None])
    (test_rows, test_mean, test_spread), test_target = rows_of(test), torch.from_numpy(flat[test, None])

    def loss(batch: torch.Tensor) -> torch.Tensor:
        return _nll(*_gaussian(net(rows[batch]), mean[batch], spread[batch]), target[batch], noise)

    train_held_out(net, loss, len(train), lambda: _nll(*_gaussian(net(test_rows), test_mean, test_spread), test_target,
                                                       noise), steps, gen, "noise2self", progress)
    del rows, mean, spread, target, test_rows
    mu, s2 = np.empty(x.size, np.float32), np.empty(x.size, np.float32)
    with torch.no_grad():
        for start in range(0, x.size, _CHUNK):
            index = np.arange(start, min(start + _CHUNK, x.size))
            rows, m, s = rows_of(index)
            m, v = _gaussian(net(rows), m, s)
            mu[index], s2[index] = m[:, 0].numpy(), v[:, 0].numpy()
    est, var = _posterior(x, mu.reshape(x.shape), s2.reshape(x.shape), noise, residual_z)
    est = np.maximum(scale * est, min(float(vol.min()), 0.0)).astype(np.float32)  # a magnitude image stays >= 0
    return (est, (scale**2 * var).astype(np.float32)) if return_variance else est


def _posterior(x: np.ndarray, mu: np.ndarray, s2: np.ndarray, sigma: float,
               z: float) -> tuple[np.ndarray, np.ndarray]:
    """The clean value's estimate from the net's Gaussian ``N(mu, s2)`` and the voxel's own noisy value ``x ~
    N(clean, sigma^2)``: ``mu + w (x - mu)`` and its error variance ``w sigma^2``, with ``w`` the larger of the
    posterior's weight ``s2 / (s2 + sigma^2)`` and the residual's ``max(0, 1 - sigma^2 / v)``, ``v`` a local mean of
    ``(x - mu)^2``: where the residual is more than the noise, the net's mean is wrong however sure it is (a
    structure one voxel wide, which no neighbourhood predicts), and the voxel's own value is kept.

    ``v`` is the mean over the largest cube of :data:`_RESIDUAL_WINDOWS` (3, 5, 7 voxels across)
    whose mean agrees with every smaller one's: the intersection of confidence intervals rule (Katkovnik, "A new
    method for varying adaptive bandwidth selection", IEEE TSP 1999), intervals ``v_n +- z sqrt(2 / n) max(v_n,
    sigma^2)`` (the spread of a mean of ``n`` squared noises). In smooth tissue the windows agree and the widest
    one's mean, the least noisy, decides (fewer voxels kept by chance); at an edge or a thin structure the residual's
    mean changes with the window and the smallest one that still agrees decides. ``z`` = 0: always 3x3x3."""
    from scipy.ndimage import uniform_filter

    def interval(mean: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        half = z * np.sqrt(2.0 / size**3) * np.maximum(mean, sigma**2)
        return mean - half, mean + half

    r = x - mu
    r2 = r * r
    smallest, *wider = _RESIDUAL_WINDOWS
    v = uniform_filter(r2, smallest, mode="reflect")
    lo, hi = interval(v, smallest)
    agree = np.ones(v.shape, bool)
    for size in wider if z > 0 else ():
        mean = uniform_filter(r2, size, mode="reflect")
        m_lo, m_hi = interval(mean, size)
        lo, hi = np.maximum(lo, m_lo), np.minimum(hi, m_hi)
        agree &= lo <= hi  # every window so far agrees: this one decides
        v = np.where(agree, mean, v)
    w = np.maximum(s2 / (s2 + sigma**2), np.clip(1.0 - sigma**2 / np.maximum(v, 1e-12), 0.0, 1.0))
    return mu + w * r, w * sigma**2
