"""Self-similarity super-resolution of thick slices: learn the thin slices from the input's own in-plane detail.

A thick-slice volume is sharp in its slice planes and blurred across them. Averaging blocks of ``factor`` voxels
along an in-plane axis gives pairs (blurred, sharp) from the input itself; a small network learns from them how each
block's ``factor`` thin values deviate from its average, given the block averages around it, and is then applied
across the slices. This is SMORE's idea (Zhao et al., "SMORE: a self-supervised anti-aliasing and super-resolution
algorithm for MRI using deep learning", IEEE TMI 2021) with a per-voxel MLP on 2D patches instead of a CNN, so it
trains in seconds on two cores. The deviations are made to sum to zero, so the result averages back to the input
exactly (data-consistent with :class:`ldp_med.physics.degradations.SliceAverageOperator`). No data outside the input
is used: nothing is shipped or fetched.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ldp_med.physics.degradations import slice_average

__all__ = ["selfsim_upsample", "mlp", "train_held_out"]

_BATCH = 4096
_MAX_ROWS = 1_000_000  # training rows kept (a random subset beyond this)
_MAX_TEST = 50_000  # held-out rows scored (a random subset beyond this)
_HOLD_OUT = 5  # one slice in this many (along the slice axis) is held out of the training
_CHECK = 100  # steps between held-out checks
_EPOCHS = 40  # at most this many passes over the training rows (a small volume stops sooner)


def _block_mean(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Thick slices of ``x``: :func:`ldp_med.physics.degradations.slice_average` without the affine."""
    return slice_average(x, np.eye(4), factor, axis)[0]


def _deviations(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """(..., factor): each block's thin values minus the block's mean, blocks along ``axis``."""
    n = x.shape[axis] // factor * factor
    x = np.moveaxis(np.take(x, np.arange(n), axis=axis), axis, -1)
    blocks = x.reshape(*x.shape[:-1], n // factor, factor)
    blocks = blocks - blocks.mean(-1, keepdims=True)
    return np.moveaxis(blocks, -2, axis)  # block index back at ``axis``, the thin offset last


def _patches(x: np.ndarray, across: int, along: int, context: int) -> np.ndarray:
    """(..., (2c+1)^2) neighbourhoods of every voxel in the plane (``across``, ``along``), reflected at the edges."""
    pad = [(0, 0)] * 3
    pad[across] = pad[along] = (context, context)
    padded = np.pad(x, pad, mode="reflect" if min(x.shape[across], x.shape[along]) > context else "edge")
    out = []
    for i in range(2 * context + 1):
        for j in range(2 * context + 1):
            index = [slice(None)] * 3
            index[across] = slice(i, i + x.shape[across])
            index[along] = slice(j, j + x.shape[along])
            out.append(padded[tuple(index)])
    return np.stack(out, -1)


def _normalised(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches centred on their middle value and divided by their spread, and that spread (N, 1)."""
    scale = patches.std(1, keepdim=True) + 1e-3
    return (patches - patches[:, patches.shape[1] // 2, None]) / scale, scale


def mlp(inputs: int, outputs: int, hidden: int) -> torch.nn.Module:
    """The per-voxel MLP of :func:`selfsim_upsample` and :func:`ldp_med.noise2self.noise2self_denoise`: two hidden
    layers of ``hidden``, GELU."""
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.GELU(), torch.nn.Linear(hidden, outputs))


def _deviation(net: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """The net's ``factor`` deviations of each patch's block, in the patches' units, summing to zero."""
    normalised, spread = _normalised(patches)
    out = net(normalised)
    return (out - out.mean(1, keepdim=True)) * spread


def _consistent_cubic(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Cubic interpolation across ``axis`` with each block's mean set back to ``x`` (the fallback the net must beat)."""
    from ldp_med.baselines import cubic_upsample

    fine = cubic_upsample(x, factor, axis)
    return fine + np.repeat(x - _block_mean(fine, factor, axis), factor, axis=axis)


def selfsim_upsample(coarse: np.ndarray, factor: int, axis: int, context: int = 2, hidden: int = 128,
                     steps: int = 2000, seed: int = 0, progress: bool = False) -> np.ndarray:
    """The fine grid of a thick-slice volume (``factor`` thin slices per slice along ``axis``, as
    :func:`ldp_med.baselines.cubic_upsample`) from a network trained on the volume's own in-plane detail.

    One slice in :data:`_HOLD_OUT` (along ``axis``) is held out of the training: the net is kept at its best step
    there (checked every :data:`_CHECK` steps), and the result is cubic interpolation (made consistent) plus
    ``alpha`` times the net's change to it, ``alpha`` in [0, 1] the least-squares weight on those held-out slices
    (small or partial volumes, where the net learns less than cubic knows, fall back towards cubic).

    Args:
        coarse: (X, Y, Z) thick-slice volume, any units.
        context: patch half-width (blocks across, voxels along the plane).
        hidden: width of the MLP's two hidden layers.
        steps: Adam steps of ``_BATCH`` patches at most (time is about linear in it: ~10 s at 2000 on two cores);
            fewer where that is more than :data:`_EPOCHS` passes over the training rows.
        seed: seeds the training rows and the network's initialisation.
        progress: a progress bar over the training steps.

    Returns:
        float32 fine-grid volume whose blocks of ``factor`` slices average back to ``coarse``.
    """
    coarse = np.asarray(coarse, np.float32)
    scale = float(np.percentile(np.abs(coarse), 99)) or 1.0
    x = coarse / scale
    planes = [a for a in range(3) if a != axis]
    rows, targets, base, held = [], [], [], []
    for across in planes:  # in-plane axis made thick, the other in-plane axis kept sharp
        along = planes[1] if across == planes[0] else planes[0]
        if x.shape[across] < 2 * factor:
            continue
        thick = _block_mean(x, factor, across)
        p = _patches(thick, across, along, context)
        rows.append(p.reshape(-1, p.shape[-1]))
        targets.append(_deviations(x, factor, across).reshape(-1, factor))
        base.append(_deviations(_consistent_cubic(thick, factor, across), factor, across).reshape(-1, factor))
        where = np.arange(thick.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
        held.append(np.broadcast_to(where % _HOLD_OUT == _HOLD_OUT // 2, thick.shape).reshape(-1))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net, alpha = mlp((2 * context + 1) ** 2, factor, hidden), 0.0
    if rows:
        rows, targets, base, held = (np.concatenate(a) for a in (rows, targets, base, held))
        keep = np.abs(rows).max(1) > 0.02  # patches with signal (2% of the 99th percentile)
        train, test = keep & ~held, keep & held
        alpha = _fit(net, *(torch.from_numpy(a[train]) for a in (rows, targets)),
                     *(torch.from_numpy(a[test]) for a in (rows, targets, base)), steps, gen, progress)
    fine = _consistent_cubic(x, factor, axis)
    if alpha > 0:
        dev = np.zeros(fine.shape, np.float32)
        with torch.no_grad():
            for along in planes:  # across the slices, each in-plane axis in turn; the mean of the two
                p = torch.from_numpy(_patches(x, axis, along, context).reshape(-1, (2 * context + 1) ** 2))
                d = torch.cat([_deviation(net, p[i:i + 65536]) for i in range(0, len(p), 65536)]).numpy()
                d = np.moveaxis(d.reshape(*x.shape, factor), axis, -2)  # (..., blocks, factor) at the end
                dev += np.moveaxis(d.reshape(*d.shape[:-2], -1), -1, axis) / len(planes)
        fine = (1 - alpha) * fine + alpha * (np.repeat(x, factor, axis=axis) + dev)
    return (scale * fine).astype(np.float32)


def _fit(net: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, test_rows: torch.Tensor,
         test_targets: torch.Tensor, test_base: torch.Tensor, steps: int, gen: torch.Generator,
         progress: bool = False) -> float:
    """Train ``net`` on (rows, targets), keep its best state on the held-out rows, and return the weight in [0, 1]
    of its change to ``test_base`` (cubic's deviations) that fits the held-out targets best (0: no rows to learn)."""
    if len(rows) == 0 or len(test_rows) == 0:
        return 0.0
    if len(rows) > _MAX_ROWS:
        pick = torch.randperm(len(rows), generator=gen)[:_MAX_ROWS]
        rows, targets = rows[pick], targets[pick]
    if len(test_rows) > _MAX_TEST:
        pick = torch.randperm(len(test_rows), generator=gen)[:_MAX_TEST]
        test_rows, test_targets, test_base = test_rows[pick], test_targets[pick], test_base[pick]
    rows, spread = _normalised(rows)
    targets = targets / spread  # the loss below is in the volume's units: (spread x (net - target))^2

    def loss(batch: torch.Tensor) -> torch.Tensor:
        out = net(rows[batch])
        return torch.mean(((out - out.mean(1, keepdim=True) - targets[batch]) * spread[batch]) ** 2)

    train_held_out(net, loss, len(rows), lambda: torch.mean((_deviation(net, test_rows) - test_targets) ** 2), steps,
                   gen, "selfsim", progress)
    with torch.no_grad():
        change, miss = _deviation(net, test_rows) - test_base, test_targets - test_base
        alpha = float(torch.sum(change * miss) / torch.sum(change * change).clamp_min(1e-12))
    return min(max(alpha, 0.0), 1.0)


def train_held_out(net: torch.nn.Module, loss, rows: int, held_out, steps: int, gen: torch.Generator, desc: str,
                   progress: bool = False) -> None:
    """Adam steps on ``loss(batch)``, ``batch`` :data:`_BATCH` indices into ``rows`` training rows drawn from ``gen``
    (one-cycle learning rate to 3e-3; ``steps``, or fewer where that is more than :data:`_EPOCHS` passes over the
    rows), leaving ``net`` at its best state by ``held_out()`` (an error on rows kept out of the training, checked
    every :data:`_CHECK` steps and at the end). The training of :func:`selfsim_upsample` and
    :func:`ldp_med.noise2self.noise2self_denoise`."""
    steps = max(1, min(steps, -(-_EPOCHS * rows // _BATCH)))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    best, state = float("inf"), None
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress):
        value = loss(torch.randint(0, rows, (_BATCH,), generator=gen))
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
        if step % _CHECK == 0 or step == steps:
            with torch.no_grad():
                err = float(held_out())
            if err < best:
                best, state = err, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)
