"""The closing solve: compressed sensing anchored to the posterior estimate, on the acquisition grid.

After posterior sampling, each sample ``x_bar`` is refined by

    argmin_x 1/2 ||A x - y||^2 + lam / 2 ||w (x - x_bar)||^2 + mu ||W x||_1

with ``A`` the problem's own operator (Cartesian multi-coil MRI, identity, slice averaging), ``W`` the
orthonormal wavelet transform the CS baseline uses (sigpy ``Wavelet``, db4), ``w`` optional per-voxel
anchor weights, and sigpy's accelerated proximal gradient method (FISTA, ``sigpy.alg.GradientMethod``)
warm-started from ``x_bar``. With ``lam = 0`` this is the L1-wavelet CS baseline's objective
(``baselines.cs_l1_wavelet``, sigpy's ``L1WaveletRecon``): whatever the prior gets wrong, tuning ``lam``
can only move the result up from that floor; where the data leave the image open, the anchor decides
(prior-image-constrained CS: PICCS, Chen et al., Med Phys 2008; LACS, Weizman et al., 2015; Sparse-Gen,
Dhar et al., ICML 2018).

The anchor is quadratic (a Gaussian reading of the posterior: ``w`` can be ``1 / std`` of the samples)
rather than the L1 distance of PICCS: the proximal operator of ``mu |c| + lam |c - a|`` on complex
wavelet coefficients has no closed form, and computing it (Dykstra-like or Newton inner iterations)
cost 2-3 s per FISTA iteration on a 2 mm volume against 0.1 s for the soft-threshold, while the
quadratic anchor joins the smooth part of the objective and keeps sigpy's exact ``L1Reg`` prox.

For the image tasks the closed samples are then blended with the task's classical estimate where the two
disagree (:func:`agreement_blend`): a brain prior meeting skull, scalp or face draws brain there, and the
classical estimate (NLM, cubic) is the better image in those places.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ldp_med.errors import require
from ldp_med.problems import Problem

__all__ = ["closing_solve", "operator_norm_sq", "soft_threshold", "agreement_blend", "agreement_weights", "air_mask",
           "air_gain", "air_blur"]


def operator_norm_sq(problem: Problem) -> float:
    """``||A||^2`` without a power iteration: Cartesian MRI with unit-norm coil maps and a 0/1 mask, and the
    identity, have norm 1; averaging ``f`` slices has norm ``1 / sqrt(f)``."""
    return 1.0 / getattr(problem.operator, "factor", 1)


def closing_solve(problem: Problem, anchors: np.ndarray, lam: float, mu: float, iters: int,
                  weights: np.ndarray | None = None, wavelet: str = "db4", operator=None,
                  y: torch.Tensor | None = None, perturb: np.random.Generator | None = None,
                  starts: np.ndarray | None = None, spin: int = 0, spin_seed: int | None = 0,
                  progress: bool = False, desc: str = "closing") -> np.ndarray:
    """Refine each anchor with the anchored CS objective of the module docstring.

    Args:
        problem: the reconstruction problem (operator ``A``, measurements ``y``).
        anchors: (B, X, Y, Z) posterior samples on the acquisition grid: complex64 for k-space (the DC
            solutions, phase included), float32 otherwise.
        lam: anchor weight (0: the CS baseline's objective).
        mu: wavelet sparsity weight (the CS baseline's lambda for k-space).
        iters: FISTA iterations, warm-started from each anchor. With ``A^H A = I`` (denoising), no per-voxel
            ``weights`` and no ``spin``, one: the gradient step lands on ``(A^H y + lam x_bar) / (1 + lam)`` from any
            ``x``, so the first prox is the minimiser and every later iteration repeats it (to float rounding).
        weights: (X, Y, Z) per-voxel anchor weights ``w`` (max 1); None means 1 everywhere.
        operator, y: use these instead of the problem's (e.g. coil-compressed k-space for speed).
        perturb: randomize-then-optimize (Bardsley et al., SIAM J. Sci. Comput. 2014; perturb-and-MAP,
            Papandreou & Yuille, ICCV 2011): each anchor's solve sees ``y`` plus fresh Gaussian noise of
            ``problem.noise_std`` drawn from this generator (complex for k-space, on the measured samples
            only), so the spread of the solutions carries the data noise as well as the anchors' disagreement.
        starts: (B, X, Y, Z) warm starts, one per anchor (None: the anchors themselves).
        spin: cycle spinning (Coifman & Donoho, 1995; Figueiredo & Nowak, 2003; BART's ``pics`` shifts its wavelets
            the same way): each iteration's wavelet prox acts on the image circularly shifted by a random offset in
            ``[0, spin)`` voxels along every axis and shifted back, so the sparsity term is, on average over the
            iterations, the decimated transform's at every offset (translation-invariant: no blocks on the
            wavelet's dyadic grid). 0: off, exactly the CS baseline's prox.
        spin_seed: seeds the offsets.
        progress, desc: a progress bar named ``desc`` over every anchor's iterations.

    Returns:
        (B, X, Y, Z) of the anchors' dtype.
    """
    sp = require("sigpy", feature="the closing solve")
    op = operator or problem.operator
    y = problem.y if y is None else y
    dtype = np.complex64 if problem.is_complex else np.float32
    measured = getattr(op, "mask", None)
    aty_y = op.A_adjoint(y)[0].numpy() if perturb is None else None  # the same for every anchor unless perturbed
    w2 = np.float32(1.0) if weights is None else np.asarray(weights, np.float32) ** 2
    step = 1.0 / (operator_norm_sq(problem) + lam * float(np.max(w2)))
    if getattr(op, "normal_is_identity", False) and weights is None and spin <= 1:
        iters = min(iters, 1)  # the first step is the minimiser (see ``iters``)
    anchors = np.asarray(anchors)
    W = sp.linop.Wavelet(tuple(anchors.shape[1:]), wave_name=wavelet)
    wavelet_l1 = sp.prox.UnitaryTransform(_l1_reg(sp, W.oshape, mu), W)
    proxg = wavelet_l1 if problem.is_complex else lambda a, x: np.real(wavelet_l1(a, x)).astype(dtype)
    if spin > 1:
        proxg = _spun(proxg, spin, np.random.default_rng(spin_seed))
    out, bar = [], tqdm(total=len(anchors) * iters, desc=desc, disable=not progress)
    try:
        for i, anchor in enumerate(anchors):
            x_bar = np.ascontiguousarray(anchor.astype(dtype))
            x0 = x_bar.copy() if starts is None else np.array(starts[i], dtype=dtype)
            aty = aty_y if perturb is None else \
                op.A_adjoint(y + _noise(perturb, y, problem.noise_std, measured))[0].numpy()

            def gradf(x: np.ndarray, x_bar=x_bar, aty=aty) -> np.ndarray:
                g = op.normal(torch.from_numpy(x)[None])[0].numpy() - aty
                if lam:
                    g += lam * w2 * (x - x_bar)
                return g.astype(dtype, copy=False)

            alg = sp.alg.GradientMethod(gradf, x0, step, proxg=proxg, max_iter=iters, accelerate=True)
            while not alg.done():
                alg.update()
                bar.update()
            out.append(alg.x)
        return np.stack(out)
    finally:  # the operator's caches would outlive the solve (1 mm: 0.9 GB through the next pass's latent fit)
        bar.close()
        op.release()


def _spun(prox, spin: int, rng: np.random.Generator):
    """``prox`` applied to the image circularly shifted by a random offset in ``[0, spin)`` per axis, shifted back."""

    def spun(alpha, x: np.ndarray) -> np.ndarray:
        shift = tuple(int(v) for v in rng.integers(0, spin, size=x.ndim))
        axes = tuple(range(x.ndim))
        return np.roll(prox(alpha, np.roll(x, shift, axes)), tuple(-v for v in shift), axes)

    return spun


def soft_threshold(lamda: float, x: np.ndarray) -> np.ndarray:
    """``(|x| - lamda)_+ sgn(x)`` of a real or complex numpy array, in torch (sigpy's ``soft_thresh`` is a numba
    ufunc compiled in every new process: 0.5-0.8 s before the first call; this is also 2x faster on complex64)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    mag = t.abs()
    return (t * (mag - lamda).clamp_min_(0).div_(mag.clamp_min_(1e-30))).numpy()


def _l1_reg(sp, shape: tuple, mu: float):
    """sigpy's ``L1Reg`` prox with :func:`soft_threshold` in place of its numba one (same ``lamda * alpha``)."""

    class L1Reg(sp.prox.L1Reg):
        def _prox(self, alpha, input):
            return soft_threshold(self.lamda * alpha, input)

    return L1Reg(shape, mu)


def _noise(rng: np.random.Generator, y: torch.Tensor, sigma: float, measured: torch.Tensor | None) -> torch.Tensor:
    """Gaussian noise of std ``sigma`` per real / imaginary component, shaped like ``y``, zero where not measured."""
    n = rng.standard_normal(tuple(y.shape), np.float32)
    if y.is_complex():
        n = n + 1j * rng.standard_normal(tuple(y.shape), np.float32)
    n = torch.from_numpy(np.asarray(sigma * n, y.numpy().dtype))
    return n if measured is None else n * measured.to(n.real.dtype)


def agreement_weights(samples: np.ndarray, reference: np.ndarray, tolerance: float, smooth: float = 1.5) -> np.ndarray:
    """The weights of :func:`agreement_blend`: ``w = exp(-d^2 / (2 tolerance^2))`` per sample, ``d`` the
    Gaussian-smoothed (``smooth`` voxels) ``|x - reference|``; 0 everywhere for ``tolerance`` 0. (B, X, Y, Z) float32."""
    from scipy.ndimage import gaussian_filter

    ref = np.asarray(reference, np.float32)
    if tolerance <= 0:
        return np.zeros(np.shape(samples), np.float32)
    return np.stack([np.exp(-gaussian_filter(np.abs(x - ref), smooth) ** 2 / (2 * tolerance**2))
                     for x in np.asarray(samples, np.float32)]).astype(np.float32)


def agreement_blend(samples: np.ndarray, reference: np.ndarray, tolerance: float, smooth: float = 1.5) -> np.ndarray:
    """Blend each sample with ``reference`` by how well they agree: ``w x + (1 - w) reference`` with
    ``w = exp(-d^2 / (2 tolerance^2))`` and ``d`` the Gaussian-smoothed (``smooth`` voxels) ``|x - reference|``
    (:func:`agreement_weights`).

    Where the prior's (closed) sample and the classical estimate agree within ``tolerance`` the sample is kept (it
    is the sharper of the two); where they disagree by several tolerances, as on anatomy the prior never saw, the
    classical estimate takes over. ``tolerance`` 0 returns the reference everywhere.

    Args:
        samples: (B, X, Y, Z) real (closed) posterior samples on the acquisition grid.
        reference: (X, Y, Z) the classical estimate on the same grid.
        tolerance: the disagreement at which ``w = exp(-1/2)``, in the images' units (``reconstruct`` uses
            ``closing.image_agreement`` times the reference's 99th percentile).
        smooth: Gaussian sigma of the disagreement map, in voxels.

    Returns:
        (B, X, Y, Z) float32 blends.
    """
    x, ref = np.asarray(samples, np.float32), np.asarray(reference, np.float32)
    w = agreement_weights(x, ref, tolerance, smooth)
    return (w * x + (1 - w) * ref).astype(np.float32)


def air_mask(image: np.ndarray, floor: float, smooth: float = 1.5, erode: int = 2) -> np.ndarray:
    """The air around the head: voxels where ``image`` (Gaussian-smoothed, ``smooth`` voxels) is below ``floor``
    times its 99th percentile and that connect to a face of the field of view (dark tissue inside the head, such as
    ventricles, does not), eroded by ``erode`` voxels away from the head. (X, Y, Z) bool; empty for ``floor`` 0."""
    from scipy import ndimage

    s = ndimage.gaussian_filter(np.asarray(image, np.float32), smooth)
    labels, _ = ndimage.label(s < floor * float(np.percentile(s, 99)))
    faces = np.unique(np.concatenate([np.moveaxis(labels, a, 0)[i].ravel() for a in range(3) for i in (0, -1)]))
    air = np.isin(labels, faces[faces > 0])
    return ndimage.binary_erosion(air, iterations=erode, border_value=1) if erode and air.any() else air


def air_gain(image: np.ndarray, energy: np.ndarray, noise: np.ndarray | float, k: float, floor: float,
             smooth: float = 1.5, erode: int = 2, air: np.ndarray | None = None) -> np.ndarray:
    """Per-voxel gains that take the noise out of the air around the head (power subtraction).

    In the air (:func:`air_mask` of ``image`` at ``floor``) a voxel keeps the share of its energy that ``k`` times
    the noise energy does not explain: ``sqrt(max(E - k N, 0) / E_out)``, ``E`` the observed energy (``energy``),
    ``N`` the noise's (``noise``), ``E_out`` the output's (``image ** 2``), each Gaussian-smoothed by ``smooth``
    voxels; 1 elsewhere and never above 1. Air that holds only noise goes to 0 (the truth there is 0: air gives no
    MR signal); air that holds more than the noise explains (a reference with noise of its own, ghosts that are in
    the data, a dim rim of skin or face below the floor) keeps that part. The means are plain: beside the head they
    take in its energy, and the air there keeps some of its noise (a faint ring). Means that keep to their side of
    an edge (ranged, session 50) and a lower weight for the head's voxels in them (session 51) narrowed the ring but
    lost on real scans whose reference has noise of its own; both were removed in session 52 (docs/results.md,
    "Ranged means in the air", "The head's weight in the air's means").

    Args:
        image: (X, Y, Z) the output magnitude.
        energy: (X, Y, Z) the observed energy (e.g. ``image ** 2``, or the noisy input's square).
        noise: (X, Y, Z) or scalar noise energy in the same units.
        k: the noise multiple (0: gains 1 everywhere).
        smooth, erode: the air mask's (:func:`air_mask`); ``smooth`` is the means' width too.
        air: the air mask, if the caller has it (:func:`air_mask` of ``image`` with ``floor``, ``smooth``, ``erode``).

    Returns:
        (X, Y, Z) float32 gains in [0, 1].
    """
    if not k or not floor:
        return np.ones(np.shape(image), np.float32)
    air = air_mask(image, floor, smooth, erode) if air is None else air
    image = np.asarray(image, np.float32)
    mean_energy, mean_out = (_smoothed(a, smooth) for a in (energy, np.square(image, dtype=np.float64)))
    mean_noise = _smoothed(noise, smooth) if np.ndim(noise) else float(noise)
    gain = np.sqrt(np.clip(mean_energy - k * mean_noise, 0, None) / np.maximum(mean_out, 1e-20))
    return np.where(air, np.minimum(gain, 1.0), 1.0).astype(np.float32)


def air_blur(samples: np.ndarray, air: np.ndarray, sigma: float) -> np.ndarray:
    """``samples`` (B, X, Y, Z) with each voxel of ``air`` replaced by the Gaussian mean (``sigma`` voxels) of the
    samples over the air alone (normalised convolution: the head beside it does not enter); the rest unchanged.

    After :func:`air_gain` the air keeps only the energy the noise does not explain, but still in the noise's pattern:
    what is left there (a reference's own noise, a faint smooth signal) cannot be told from that pattern, and its
    mean is the better estimate (the least squared error, and no texture for SSIM to compare)."""
    from scipy import ndimage

    if not sigma or not air.any():
        return samples
    share = np.maximum(ndimage.gaussian_filter(air.astype(np.float32), sigma), 1e-6)

    def mean(a):
        return ndimage.gaussian_filter(np.where(air, a, 0).astype(np.float32), sigma) / share

    out = np.array(samples, copy=True)
    for b, x in enumerate(samples):
        blurred = mean(x.real) + 1j * mean(x.imag) if np.iscomplexobj(x) else mean(x)
        out[b] = np.where(air, blurred, x)
    return out


def _smoothed(a: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(np.asarray(a, np.float64), sigma)
