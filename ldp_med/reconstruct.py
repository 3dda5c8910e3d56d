"""Reconstruct one input: settle the task and method once, load the input once, build its problem once,
and dispatch through one (task, method) table. The CLI, the Python API and the MONAI integration all
come through :func:`reconstruct`.

    data = load_input(path, task)                  # KSpaceData or Volume, read once
    problem = build_problem(data, task, cfg)       # operator, measurements, pseudo-inverse, coil maps
    result = SOLVERS[task, method](problem, cfg, prior, progress)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import numpy as np

from ldp_med import baselines
from ldp_med.config import ReconstructConfig
from ldp_med.errors import InputError
from ldp_med.io.kspace import KSpaceData, load_kspace
from ldp_med.io.loaders import header_geometry, is_kspace_file, load_volume
from ldp_med.io.volume import Volume
from ldp_med.problems import THICK_RATIO, Problem, denoise_problem, is_thick, kspace_problem, superres_problem
from ldp_med.tasks import DEFAULT_METHOD, METHODS, PRIOR_METHODS, with_task_settings

__all__ = ["Reconstruction", "resolve_task", "volume_task", "resolve_method", "load_input", "build_problem", "SOLVERS",
           "settle",
           "reconstruct", "reconstruct_file"]


@dataclasses.dataclass
class Reconstruction:
    """A reconstruction on the acquisition grid: the image, the std map (prior with samples > 1), the problem."""

    volume: Volume
    std: Volume | None
    problem: Problem


def resolve_task(path: str | os.PathLike, task: str) -> str:
    """``auto``: kspace for an ``.h5`` container, else :func:`volume_task`; a task given must suit the input's kind."""
    is_h5 = is_kspace_file(path)
    if task == "auto":
        return "kspace" if is_h5 else volume_task(path)[0]
    if task == "kspace" and not is_h5:
        raise InputError(path, "--task kspace needs a k-space container (.h5)")
    if task != "kspace" and is_h5:
        raise InputError(path, f"--task {task} needs a NIfTI file or DICOM folder, not a k-space container")
    return task


def volume_task(path: str | os.PathLike) -> tuple[str, str]:
    """(task, why) for a volume given without a task: ``superres`` when one axis is at least
    :data:`~ldp_med.problems.THICK_RATIO` times thicker than the others (:func:`~ldp_med.problems.is_thick`: thick
    slices), else ``denoise``. The voxel sizes come from the header (:func:`~ldp_med.io.loaders.header_geometry`),
    or from the volume itself where the header does not tell (MINC, a single DICOM file; the reader's errors
    propagate)."""
    found = header_geometry(path)
    sizes = found[1] if found is not None else tuple(load_volume(path).voxel_sizes)
    voxels, ratio = " x ".join(f"{z:.3g}" for z in sizes) + " mm voxels", f"{THICK_RATIO:g}x"
    if is_thick(sizes):
        return "superres", f"{voxels}: one axis {ratio} or more thicker than the others; --task denoise to denoise"
    return "denoise", f"{voxels}: no axis {ratio} thicker than the others; --task superres for thick slices"


def resolve_method(path: str | os.PathLike | None, task: str, method: str | None) -> str:
    """The method to run for ``task`` (its default when ``method`` is None); unknown pairs are errors."""
    method = method or DEFAULT_METHOD[task]
    if method not in METHODS[task]:
        raise InputError(path, f"method {method!r} does not apply to task {task} (choose from {', '.join(METHODS[task])})")
    return method


def load_input(path: str | os.PathLike, task: str, volume_index: int | None = None) -> KSpaceData | Volume:
    """Read ``path`` once: a k-space container for ``kspace``, else a volume (NIfTI / DICOM)."""
    if task == "kspace":
        if volume_index is not None:
            raise InputError(path, "a volume index applies to 4-D NIfTI only, not to k-space")
        return load_kspace(path)
    return load_volume(path, volume_index)


def build_problem(data: KSpaceData | Volume, task: str, cfg: ReconstructConfig, noise_std: float | None = None,
                  source: str | os.PathLike | None = None, progress: bool = False) -> Problem:
    """The one builder of each task (every method of the task solves the problem it returns).

    Args:
        data: k-space container (kspace) or volume (denoise, superres).
        noise_std: measurement noise std in the data's units; None reads the file's or estimates it.
        source: the file the data came from (named in errors); a volume's own ``source`` otherwise.
        progress: a progress bar over ESPIRiT, when a container without coil maps needs them.
    """
    if task == "kspace":
        if not isinstance(data, KSpaceData):
            raise TypeError(f"task kspace needs KSpaceData, got {type(data).__name__}")
        return kspace_problem(data, noise_std, cfg.baseline.espirit_calib, source, progress)
    if not isinstance(data, Volume):
        raise TypeError(f"task {task} needs a Volume, got {type(data).__name__}")
    if source is not None:
        data = Volume(data.data, data.affine, {**data.meta, "source": str(source)})
    if task == "denoise":
        return denoise_problem(data, noise_std)
    return superres_problem(data, cfg.factor, cfg.axis, noise_std)


#: ``(problem, cfg, prior, progress) -> (image, std or None, meta)`` on the problem's acquisition grid.
Solver = Callable[[Problem, ReconstructConfig, object, bool], tuple[np.ndarray, np.ndarray | None, dict]]


def _pinv(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    """The problem's pseudo-inverse: zero-filled for kspace, cubic interpolation for superres (``problems``)."""
    return problem.pinv.data, None, {}


def _selfsim(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    """Self-similarity super-resolution (:func:`ldp_med.selfsim.selfsim_upsample`) of the thick slices."""
    from ldp_med.selfsim import selfsim_upsample

    b, op = cfg.baseline, problem.operator
    thick = problem.y[0].numpy()
    return selfsim_upsample(thick, op.factor, op.axis, b.selfsim_context, b.selfsim_hidden, b.selfsim_steps,
                            progress=progress), None, {}


def _cs(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    b, k = cfg.baseline, problem.kspace
    img = baselines.cs_l1_wavelet(k.kspace, k.mask, k.sensitivity_maps, b.cs_lambda, b.cs_iters, b.cs_wavelet, progress)
    return np.abs(img).astype(np.float32), None, {}


def _tv(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    b, k = cfg.baseline, problem.kspace
    img = baselines.cs_total_variation(k.kspace, k.mask, k.sensitivity_maps, b.tv_lambda, b.tv_iters, progress)
    return np.abs(img).astype(np.float32), None, {}


def _nlm(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    b = cfg.baseline
    return baselines.denoise_nlm(problem.pinv.data, b.nlm_patch_size, b.nlm_patch_distance, b.nlm_h_factor), None, {}


def _noise2self(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    """Blind-spot self-supervised denoising (:func:`ldp_med.noise2self.noise2self_denoise`) with the tissue's sigma."""
    return _noise2self_with_variance(problem, cfg, progress)[0], None, {}


def _noise2self_with_variance(problem: Problem, cfg: ReconstructConfig, progress: bool):
    """(noise2self's image, its error variance): the one call of it that the solver and the blend share."""
    from ldp_med.noise2self import noise2self_denoise

    b = cfg.baseline
    return noise2self_denoise(problem.pinv.data, magnitude_noise(problem), b.noise2self_context, b.noise2self_hidden,
                              b.noise2self_steps, progress=progress, return_variance=True,
                              residual_z=b.noise2self_residual_z)


def _bm4d(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
    return baselines.denoise_bm4d(problem.pinv.data, magnitude_noise(problem)), None, {}


def classical_estimate(problem: Problem, cfg: ReconstructConfig, progress: bool = False,
                       variance: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The image of the classical method that the prior is blended with (``closing.classical``, else the task's
    for the problem's acquisition: ``ldp_med.tasks.TASK_SETTINGS``) and, with ``variance``, its error variance:
    noise2self's own (``w sigma^2``); another denoiser's is noise2self's of the same input, run for it (BM4D on a
    small field of view: validation parts' std map Spearman 0.163 with it, 0.011 with the samples' spread standing in;
    docs/tune_std_small_denoise.md); None for super-resolution (the caller's samples' spread stands in)."""
    method = settle(cfg, problem).closing.classical
    if method == "noise2self":
        image, var = _noise2self_with_variance(problem, cfg, progress)
        return image, var if variance else None
    image = SOLVERS[problem.task, method](problem, cfg, None, progress)[0]
    own = _noise2self_with_variance(problem, cfg, progress)[1] if variance and problem.task == "denoise" else None
    return image, own


def magnitude_noise(problem: Problem) -> float:
    """The Gaussian sigma under an image task's magnitude noise: the problem's where it was given, else the tissue's
    (:func:`ldp_med.physics.estimate_rician_noise`; the problem's own estimate pools the air's Rayleigh noise and
    runs ~0.7-0.8x low). BM4D with it: validation 10002 25.58 -> 25.66 dB, its head 28.17 -> 28.32."""
    from ldp_med.physics import estimate_rician_noise

    return problem.noise_std if problem.noise_source != "estimated" else estimate_rician_noise(problem.pinv.data)


def settle(cfg: ReconstructConfig, problem: Problem, model=None) -> ReconstructConfig:
    """``cfg`` with the settings it leaves to the task (None) filled in at the problem's undersampling factor
    (``ldp_med.tasks.TASK_SETTINGS``): the sampler's ``t_start`` / ``prior_error`` / ``std_scale`` and the closing
    ``anchor`` (k-space), ``restarts`` and ``iters``; k-space's closing ``mu`` left None is the CS baseline's
    ``cs_lambda``; the acquisition's regimes (:meth:`ldp_med.problems.Problem.regimes`: coarse voxels, a field of
    view small against the grid of ``model``, the prior's :class:`ldp_med.config.ModelConfig`) take
    ``ldp_med.tasks.REGIME_SETTINGS`` first."""
    from ldp_med.sampling.posterior import for_task

    regimes = problem.regimes(model)
    closing = with_task_settings(cfg.closing, "closing", problem.task, problem.factor, regimes)
    if problem.is_complex and closing.mu is None:
        closing = dataclasses.replace(closing, mu=cfg.baseline.cs_lambda)
    posterior = for_task(cfg.posterior, problem.task, problem.factor, regimes)
    return dataclasses.replace(cfg, posterior=posterior, closing=closing)


def _posterior(sampler: str | None) -> Solver:
    """Latent posterior sampling with the sampler ``sampler`` (None: the one ``cfg.posterior.method`` names)."""

    def solve(problem: Problem, cfg: ReconstructConfig, prior, progress: bool):
        from ldp_med.sampling.posterior import reconstruct as sample

        cfg = settle(cfg, problem, prior.config)
        # k-space's anchor weighs the prior's belief per model voxel: a finer acquisition voxel gets its volume's share
        share = min(1.0, problem.voxel_mm3 / float(prior.config.voxel_mm) ** 3)
        if share < 1.0 and cfg.closing.anchor:
            cfg = dataclasses.replace(cfg, closing=dataclasses.replace(cfg.closing, anchor=cfg.closing.anchor * share))
        post = cfg.posterior if sampler is None else dataclasses.replace(cfg.posterior, method=sampler)
        classical = None
        if post.classical_start and not problem.is_complex:  # one classical estimate: the warm start and the blend
            classical = classical_estimate(problem, cfg, progress)[0]
        image, nfe, passes, alignment = classical, 0, cfg.closing.restarts + 1, None
        for last in (p == passes - 1 for p in range(passes)):  # each pass warm-starts from the one before
            # a pass before the last only warm-starts the next one: no latent fit there; the placement is estimated once
            res = sample(prior, problem, post if last else dataclasses.replace(post, latent_fit_iters=0),
                         progress=progress, init=image, alignment=alignment)
            nfe, alignment = nfe + res.nfe, res.alignment
            if cfg.closing.iters == 0:
                image, std = res.mean, None if res.std is None else res.std * post.std_scale
                continue
            images, var = _close(problem, res.samples, cfg if last else _restart_config(cfg), res.support,
                                 spread=last and len(res.samples) > 1, classical=classical, progress=progress)
            image = np.abs(images).mean(0)
            std = None if var is None else pooled_std(var, post.std_smooth) * post.std_scale
        meta = {"nfe": nfe, "sampler": res.method, **{k: v for k, v in res.meta.items() if k.startswith("align_")}}
        regimes = problem.regimes(prior.config)  # whose settings came first (ldp_med.tasks.REGIME_SETTINGS)
        blended = not problem.is_complex and (classical is not None or (cfg.closing.iters and cfg.closing.image_agreement))
        return image, std, {**meta, **({"closing_iters": cfg.closing.iters} if cfg.closing.iters else {}),
                            **({"classical": cfg.closing.classical} if blended else {}),
                            **({"regimes": list(regimes)} if regimes else {})}

    return solve


def _restart_config(cfg: ReconstructConfig) -> ReconstructConfig:
    """The config of a pass before the last, whose closed image only warm-starts the next pass: with
    ``closing.restart_iters`` set, the anchored solve alone (no agreement solve, no air gain), that many iterations
    from the sample; otherwise ``cfg``."""
    c = cfg.closing
    if c.restart_iters is None:
        return cfg
    return dataclasses.replace(cfg, closing=dataclasses.replace(c, iters=c.restart_iters, agreement=0.0, air=0.0))


def pooled_std(var: np.ndarray, smooth: float) -> np.ndarray:
    """The square root of a variance map pooled over a Gaussian neighbourhood of sigma ``smooth`` voxels (0: none):
    a spread over 8 samples is a noisy estimate voxel by voxel."""
    from scipy.ndimage import gaussian_filter

    var = np.asarray(var, np.float64)
    return np.sqrt(gaussian_filter(var, smooth) if smooth else var).astype(np.float32)


#: k-space's air noise probe (``closing.air``): (FISTA iterations, coil energy kept) of the perturbed solve whose
#: distance from the closed image estimates the noise energy. Cheaper than the closing solve itself (10 iterations on
#: every coil: +2.5 s at R=4); it underestimates the noise, which the noise multiple absorbs (validation 10002, its
#: head and its noisy head: within 0.03 dB of the full solve at k 4 against 2, +0.5 s; docs/results.md, "Air").
AIR_PROBE: tuple[int, float] = (5, 0.95)


def _close(problem: Problem, samples: np.ndarray, cfg: ReconstructConfig, support: np.ndarray | None,
           spread: bool = False, classical: np.ndarray | None = None,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The closing solve of every posterior sample (:mod:`ldp_med.sampling.closing`); weights from the config,
    the anchor restricted to the model's ``support`` when ``closing.anchor_support`` (k-space) or
    ``closing.image_anchor_support`` (denoise, superres) is on; for the image tasks each closed sample is then
    blended with the task's classical estimate where they disagree (``closing.image_agreement``). ``classical``: the
    classical estimate the samples were warm-started from (``posterior.classical_start``), else None (computed here
    for the blend, with a progress bar if ``progress``).

    Returns the closed samples and, with ``spread``, a variance map: the spread of the same solves on data perturbed
    by fresh noise of the problem's level (randomize-then-optimize, seeded by ``posterior.seed``), plus for the
    blended image tasks the mixture variance ``w v_x + (1 - w) v_c + w (1 - w) (x - c)^2`` (averaged over samples):
    the blend's expected squared error if the truth lies, with probability ``w``, around the closed sample ``x`` (as
    uncertain as the perturbed solves, ``v_x``) and otherwise around the classical estimate ``c`` (``v_c``: its error
    variance from :func:`classical_estimate`, noise2self's for denoising; super-resolution's ``v_x``); and, for
    samples warm-started from ``classical``, its squared distance from the pseudo-inverse (what it changed, uncertain
    by as much: the samples inherit its error, so their spread does not show it)."""
    from ldp_med.sampling.closing import agreement_weights, closing_solve
    from ldp_med.sampling.posterior import compressed

    c = settle(cfg, problem).closing
    if problem.is_complex:
        mu, anchor, on_support = c.mu, c.anchor, c.anchor_support
    else:
        mu, anchor, on_support = c.image_mu * problem.noise_std, c.image_anchor, c.image_anchor_support
    op, y = compressed(problem, c.coil_energy)
    weights, starts = support if on_support else None, None
    spin = {"spin": c.spin, "spin_seed": cfg.posterior.seed}
    if problem.is_complex and c.agreement and anchor:
        # the anchor only where each sample agrees with the data's own solve from it (the CS objective, anchor 0)
        free = closing_solve(problem, samples, 0.0, mu, c.agreement_iters, wavelet=cfg.baseline.cs_wavelet,
                             operator=op, y=y, progress=progress, desc="agreement", **spin)
        starts = free if c.from_free else None
        free_abs = np.abs(free)
        tol = c.agreement * float(np.percentile(free_abs, 99))
        agree = np.mean([agreement_weights(np.abs(s)[None], f, tol)[0] for s, f in zip(samples, free_abs)], 0)
        weights = agree if weights is None else weights * agree
    solve = functools.partial(closing_solve, problem, samples, anchor, mu, iters=c.iters, weights=weights,
                              wavelet=cfg.baseline.cs_wavelet, operator=op, y=y, starts=starts, progress=progress,
                              **spin)
    closed = solve()
    var = np.abs(solve(perturb=np.random.default_rng(cfg.posterior.seed), desc="spread")).var(0, ddof=1) \
        if spread else None
    if var is not None and classical is not None:  # the warm start's own error, which no sample's spread sees
        var = var + (classical - problem.pinv.data) ** 2
    if not problem.is_complex and c.image_agreement:
        own = None  # the classical estimate's error variance (classical_estimate's), asked for with the spread
        if classical is None:
            classical, own = classical_estimate(problem, cfg, progress, variance=var is not None)
        w = agreement_weights(closed, classical, c.image_agreement * float(np.percentile(classical, 99)))
        if var is not None:
            own = var if own is None else own
            var = np.mean(w * var + (1 - w) * own + w * (1 - w) * (closed - classical) ** 2, 0)
        closed = (w * closed + (1 - w) * classical).astype(np.float32)
    if c.air and c.air_floor:  # the noise out of the air around the head
        from ldp_med.sampling.closing import air_blur, air_mask

        air = air_mask(np.abs(closed).mean(0), c.air_floor, c.air_smooth, c.air_erode)
        gain = air_gains(problem, closed, c, cfg.posterior.seed, solve, air)
        closed = air_blur((closed * gain).astype(closed.dtype), air, c.air_blur)  # what the air keeps: its mean
        var = None if var is None else var * gain**2
    return closed, var


def air_gains(problem: Problem, closed: np.ndarray, closing, seed: int | None, solve,
              air: np.ndarray | None = None) -> np.ndarray:
    """The air step's (X, Y, Z) gains for the (B, X, Y, Z) ``closed`` samples (:func:`ldp_med.sampling.closing.air_gain`
    with ``closing.air`` and ``closing.air_floor``). k-space: the noise energy is how far ``solve`` (the solve that
    made ``closed``, a ``closing_solve`` partial) moves in :data:`AIR_PROBE`'s short run on data perturbed by fresh
    noise of the data's level, seeded by ``seed``; the image tasks: ``2 sigma^2`` of a magnitude image against the
    noisy input's energy (sigma: :func:`magnitude_noise`). ``air``: the air mask of ``closed``'s mean magnitude, if the
    caller has it."""
    from ldp_med.sampling.closing import air_gain
    from ldp_med.sampling.posterior import compressed

    image = np.abs(closed).mean(0)
    if problem.is_complex:
        op, y = compressed(problem, AIR_PROBE[1])
        probe = solve(perturb=np.random.default_rng(seed), iters=AIR_PROBE[0], operator=op, y=y, desc="air probe")
        energy, noise = image**2, np.mean((np.abs(probe) - np.abs(closed)) ** 2, 0)
    else:  # E y^2 = s^2 + 2 sigma^2
        energy, noise = np.square(problem.pinv.data, dtype=np.float64), 2 * magnitude_noise(problem) ** 2
    return air_gain(image, energy, noise, closing.air, closing.air_floor, closing.air_smooth, closing.air_erode, air)


#: One (task, method) table: every pair the registry (``ldp_med.tasks``) allows, and nothing else.
SOLVERS: dict[tuple[str, str], Solver] = {
    ("kspace", "zero-filled"): _pinv, ("kspace", "cs"): _cs, ("kspace", "tv"): _tv,
    ("denoise", "nlm"): _nlm, ("denoise", "bm4d"): _bm4d, ("superres", "cubic"): _pinv,
    ("denoise", "noise2self"): _noise2self, ("superres", "selfsim"): _selfsim,
    **{(t, "prior"): _posterior(None) for t in METHODS},
    **{(t, "dps"): _posterior("dps") for t in METHODS},
}
assert set(SOLVERS) == {(t, m) for t, ms in METHODS.items() for m in ms}


def reconstruct(data: KSpaceData | Volume, task: str, cfg: ReconstructConfig | None = None, prior=None,
                progress: bool = False, noise_std: float | None = None,
                source: str | os.PathLike | None = None) -> Reconstruction:
    """Reconstruct in-memory data with ``cfg.method`` (the task's default when None).

    kspace: output on the k-space grid with the container's affine, in ``reference`` units.
    denoise: same grid and units as the input. superres: the fine grid (``cfg.factor`` x thinner
    slices along ``cfg.axis``) with the fine grid's affine.

    Args:
        prior: a loaded :class:`~ldp_med.models.pretrained.Prior` for the prior methods (None loads the
            shipped one when needed).
    """
    cfg = cfg or ReconstructConfig()
    method = resolve_method(source, task, cfg.method)
    problem = build_problem(data, task, cfg, noise_std, source, progress)
    if method in PRIOR_METHODS and prior is None:
        from ldp_med.models.pretrained import load_pretrained

        prior = load_pretrained()
    mean, std, extra = SOLVERS[task, method](problem, cfg, prior, progress)
    meta = {**problem.meta, "method": method, **extra}
    if task == "superres":  # a new grid: the input's header fields no longer describe it
        meta = {k: v for k, v in meta.items() if k not in ("qform", "sform", "zooms")}
    vol = Volume(np.asarray(mean, np.float32), problem.affine, meta)
    std_vol = None if std is None else Volume(np.asarray(std, np.float32), problem.affine, {**meta, "method": f"{method}-std"})
    return Reconstruction(vol, std_vol, problem)


def reconstruct_file(path: str | os.PathLike, cfg: ReconstructConfig | None = None, volume_index: int | None = None,
                     progress: bool = False, prior=None) -> Reconstruction:
    """Settle the task for ``path``, read it once and :func:`reconstruct` it."""
    cfg = cfg or ReconstructConfig()
    task = resolve_task(path, cfg.task)
    resolve_method(path, task, cfg.method)  # a wrong pair fails before anything is read
    return reconstruct(load_input(path, task, volume_index), task, cfg, prior, progress, source=path)
