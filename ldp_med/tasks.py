"""The one registry of task and method names (the CLI, configs, the MONAI integration and scripts import it).

Tasks: ``kspace`` (undersampled multi-coil k-space), ``denoise`` (a noisy volume), ``superres``
(thick slices). Each has classical methods and the two latent-prior methods; the first classical
method listed is not necessarily the default: :data:`DEFAULT_METHOD` is.

Posterior samplers (``PosteriorConfig.method``): ``dds`` (alias ``prior``) and ``dps``. The reconstruct
method ``prior`` runs the sampler that ``PosteriorConfig.method`` names; ``dps`` always runs DPS.
"""

from __future__ import annotations

import dataclasses

TASKS: tuple[str, ...] = ("kspace", "denoise", "superres")
PRIOR_METHODS: tuple[str, ...] = ("prior", "dps")
CLASSICAL_METHODS: dict[str, tuple[str, ...]] = {
    "kspace": ("zero-filled", "cs", "tv"),
    "denoise": ("nlm", "bm4d", "noise2self"),
    "superres": ("cubic", "selfsim"),
}
METHODS: dict[str, tuple[str, ...]] = {t: CLASSICAL_METHODS[t] + PRIOR_METHODS for t in TASKS}
ALL_METHODS: tuple[str, ...] = tuple(dict.fromkeys(m for t in TASKS for m in METHODS[t]))
#: k-space: the prior, above CS on every volume measured (template and 8 test subjects R=4 +2.11 to +3.63 dB aligned,
#: with the air's noise taken out and the closing's wavelets spun, SSIM +0.12 or more; R=8 +2.43 to +3.99, mean +3.20,
#: SSIM +0.14 or more; heads with skull +1.42 to +2.65, real scans that packages ship +0.57 to +1.53) in 0.46-0.64x
#: CS's time on 2 mm volumes, CS timed beside it (docs/results.md, "The wide PCA prior ships" and the sections after
#: it, last "Cycle spinning in the closing solve"). Denoise: the prior blended with noise2self (session 35), template and test
#: subjects +7.4 to +8.3 dB over NLM and BM4D, heads with skull +2.9 / +7.8, real scans -0.75 (nibabel, against BM4D)
#: and -0.52 (dipy's b0, against NLM, a reference with noise of its own) ("Blind-spot self-supervised denoising"). Superres: self-similarity super-resolution (``ldp_med.selfsim``, session
#: 34), +3.4 to +5.8 dB over cubic on the template and test subjects, +2.5 / +3.9 on heads with skull, +0.3 / +0.4
#: on two small real scans, SSIM above cubic's on every volume; the prior warm-started from it and blended back into
#: it is within 0.05 dB of it (SSIM lower) and takes longer (docs/results.md, "Self-similarity super-resolution").
DEFAULT_METHOD: dict[str, str] = {"kspace": "prior", "denoise": "prior", "superres": "selfsim"}
#: The settings a config leaves to the task (None), each as (undersampling factor, value) points, linearly
#: interpolated and held constant past the ends: the image tasks have factor 1, k-space the mask's realised
#: acceleration (:attr:`ldp_med.problems.Problem.factor`). Every value is tuned or calibrated on validation subjects
#: (10000-10099) only; an explicit ``--set`` still wins (docs/results.md, "Sampler settings per task", "Super-resolution's
#: warm start", "Settings per undersampling factor").
#:
#: - ``posterior.t_start`` / ``posterior.prior_error`` / ``closing.anchor``: k-space leans on its data (prior_error
#:   0.1) from a late warm start (t_start 0.1: 5 of 50 DDIM steps), so the sample stays near the data and the closing
#:   solve can lean on it: anchor 0.1 at R=4, 0.2 at R=8 (session 22's (0.3, 0.02): R=4 41.17 -> 41.39 dB, R=8 37.03 ->
#:   37.70 on validation 10000-10001; R=4 also 41.32 -> 41.55 on 10002-10003). Denoise keeps (0.5, 0.03) (at (0.1,
#:   0.3): -1.5 dB); super-resolution starts at 0.06 (3 of 50 steps: +0.8 dB over 0.5 on validation).
#: - ``closing.restarts``: at R=8 the sampler runs a second time, warm-started from the first pass's closed image
#:   instead of the zero-filled one, and closes again (validation 37.70 -> 37.91 dB, SSIM 0.8662 -> 0.8736, twice the
#:   time; a third pass 37.84; at R=4 no gain: 41.39 both).
#: - ``closing.iters``: k-space 10 from the agreement's anchor-free solve (``closing.from_free``: as good as 30 from
#:   the sample on validation at R=4, -0.07 dB at R=8, in 0.6-0.8x the time); the image tasks 30 from the sample
#:   (denoising's solve stops after the first, its minimiser: ``closing_solve`` with ``A = I``, since session 51).
#: - ``posterior.latent_fit_iters``: at R=8, 6 Adam steps on the final latent toward the data through the decoder
#:   (``fit_latents``; validation brains and heads 10000-10003: R=8 35.91 -> 36.10 dB, SSIM +0.006, +6 s per volume;
#:   R=4 +0.08 dB for the same 6 s, not taken: docs/results.md, "A latent fit before the closing solve"); 6 steps since
#:   session 30 (validation 10000-10001 with heads: 35.67 against 35.70 dB for 10, 2.4 s less; R=8's time target).
#: - ``posterior.keep_detail``: mapped model images keep the detail of the last data-consistent image that the model
#:   grid cannot hold (``SpaceMap.detail``); validation brains, heads, half fields of view and necks 10000-10001: k-space
#:   R=8 34.56 -> 34.83 dB, R=4 39.08 -> 39.20, super-resolution +0.04 dB, denoising -0.01 (off: the detail of a noisy
#:   image is noise); docs/tune_keep_detail_*.md.
#: - ``posterior.align``: k-space places the model grid by registration (``ldp_med.align``) up to R=4 (to R=6, where the
#:   points' interpolation rounds), centring at R=8. Validation brains, heads, half fields of view and necks 10000-10001
#:   (session 30, docs/tune_align_kspace_r4.md): R=4 39.20 -> 39.49 dB, worst margin over CS +0.53 -> +0.74; the
#:   estimate's 4-12 s of single-threaded CPU fit R=4's time (0.3-0.4x CS before). R=8 gains as much (+0.51 dB) but
#:   not within its time: 15.8 -> 22.6 s per volume against CS's 26.4 (session 31, docs/results.md); without the
#:   restart pass to pay for it, brains lose 0.1-0.4 dB. Denoising centres: aligned, validation gains on average
#:   (27.95 -> 28.13 dB, docs/tune_align_denoise.md: heads, necks, half fields of view) but brains lose 0.1-0.4 dB
#:   (the noisy image interpolated both ways; test run, session 31, docs/results.md); super-resolution centres (34.63
#:   -> 34.45 aligned, docs/tune_align_superres.md).
#:   A coarse acquisition and a small field of view centre whatever the factor (:data:`REGIME_SETTINGS`).
#: - ``closing.air`` / ``closing.air_floor``: the closed image's air around the head keeps only the energy the noise
#:   does not explain (:func:`ldp_med.sampling.closing.air_gain`, the noise multiple and the air's threshold).
#:   Validation brains, heads, half fields of view, necks and heads with noise of their own 10000-10001
#:   (docs/tune_air_*.md): k-space 4 at R=4 (39.18 -> 39.75 dB, worst margin over CS +0.74 -> +1.00; +1.1 s for the
#:   noise probe), 10 at R=8 (34.44 -> 34.57 at 4; session 33, with the faint-air heads too, 4 / 6 / 10: 34.40 /
#:   34.44 / 34.49, SSIM 0.929 / 0.943 / 0.962, worst margin +0.75 / +0.75 / +0.76, docs/tune_air_k_r8.md),
#:   denoise 1 with sigma from the tissue (``magnitude_noise``; session 33, validation with heads whose air holds a
#:   faint smooth signal: 28.43 -> 31.44 dB, worst margin over NLM +1.20 -> +3.17, docs/tune_air_denoise_rician.md;
#:   k 4 with the pooled sigma, session 32, took the NLin6Asym test head 2.1 dB down), super-resolution 0 (+0.02 dB).
#:   ``closing.air_erode`` / ``closing.air_floor`` for denoise 0 / 0.2 since session 48 (2 / 0.1 before): the air's
#:   2-voxel margin left a band of Rician floor around the head, two thirds of the demo scan's squared error. The twelve
#:   validation volumes above: 32.83 -> 33.41 dB at erode 0 (1: 33.19; smoothing 0.75 instead of 1.5 loses SSIM, 0.79
#:   against 0.87), every volume up, and 33.54 with the floor at 0.2 (0.3: 33.56), worst margin over NLM +4.59 ->
#:   +5.19 (docs/tune_air_erode_denoise.md, docs/tune_air_floor_erode0_denoise.md). k-space keeps 2 (untuned).
#: - ``closing.air_blur``: denoise 1.5 since session 50 (the air becomes its Gaussian mean over the air after the
#:   gains). 21 validation volumes (the above, plus dim-rim, 3%-own-noise, coarse and small-part heads and the Conte
#:   Core 2 template head; docs/tune_air_blur_denoise.md): 33.04 -> 33.61 dB, SSIM 0.872 -> 0.882, no volume down in
#:   either (2.5: 33.90, but a dim rim's SSIM -0.007); test heads +0.07 to +0.83 dB, real scans unchanged
#:   (docs/results.md, "The air keeps its mean"). k-space 0 (session 51, 21 validation volumes at R=4: 39.14 dB at
#:   0 and 1.5, a 3%-own-noise head -0.52; docs/tune_air_blur_kspace_r4.md), super-resolution 0 (no air step).
#: - ``posterior.classical_start`` / ``closing.image_agreement``: super-resolution warm-starts from the self-similarity
#:   estimate (``selfsim``, its classical method since session 34: +4.1 dB over cubic on validation brains, heads, half
#:   fields of view, necks and noisy heads 10000-10001, docs/tune_selfsim.md) and blends it back in where the closed
#:   sample differs by more than 0.002 of its 99th percentile: 0.002 / 0.005 / 0.01 give 38.13 / 38.06 / 37.78 dB
#:   against selfsim's 38.14 (docs/tune_superres_selfsim_agreement.md; the cubic warm start with the cubic blend at
#:   0.04 was 34.3 on a subset): the prior adds nothing to it, it only keeps the margin. Denoise blends with
#:   noise2self at 0.02 (0.08 / 0.04 / 0.02 / 0.01: 29.90 / 31.83 / 32.42 / 32.19 dB on the validation volumes above;
#:   NLM at 0.04, its old partner: 31.49; docs/tune_noise2self_denoise.md).
#: - ``posterior.std_scale``: the std map's scale, calibrated so that ``|error| <= 1.645 std`` holds for 90% of head
#:   voxels with ``--samples 8`` (docs/results.md, "Std map"); the perturbed solves miss more of the error the fewer
#:   k-space samples there are, hence a scale per factor. Denoise 1.04 since session 44 (blended with noise2self, its
#:   error variance ``w sigma^2`` in the mixture, ``w`` from the grown residual window:
#:   docs/tune_std_denoise_residual_window.md; 1.02 with the 3x3x3 window since session 42, 1.16 before).
#: - ``closing.classical``: the classical method the image tasks' prior is blended with (``closing.image_agreement``)
#:   and warm-started from (``posterior.classical_start``). Denoise: the blind-spot self-supervised denoiser
#:   (``ldp_med.noise2self``, session 35) instead of NLM: validation brains, heads, half fields of view, necks, noisy
#:   and faint-air heads 10000-10001, the prior 31.49 dB blended with NLM at 0.04, 32.42 with noise2self at 0.02
#:   (docs/tune_noise2self_denoise.md); 32.83 with session 44's noise2self. A small field of view blends with BM4D
#:   instead (:data:`REGIME_SETTINGS`). Super-resolution: self-similarity (``ldp_med.selfsim``, session 34).
#: - ``closing.spin``: cycle spinning of the closing's wavelet term (random shifts in [0, 8) voxels per iteration):
#:   k-space R=4 +0.86 dB, R=8 +1.20 dB on validation (docs/tune_spin_kspace_r*.md; 16 ties); the image tasks 0
#:   (denoise +0.01 dB: docs/tune_spin_denoise.md).
#: Acquisition voxel volume (mm^3) from which an acquisition is coarse (coarser than 3 mm isotropic; e.g. an EPI b0
#: at 4x4x5 mm): the regime ``"coarse"`` of :data:`REGIME_SETTINGS`.
COARSE_VOXEL_MM3 = 27.0
#: Fraction of the model grid's field of view below which an acquisition's is a small part of a head (the shipped
#: model's grid holds 8.3 l: below 1 l, where no whole brain fits; nibabel's T1 part is 0.03 of it, half a head
#: 0.3-0.5): the regime ``"small"`` of :data:`REGIME_SETTINGS`.
SMALL_FOV_FRACTION = 0.125
#: The settings of a coarse acquisition, for every task (same form as a task's in :data:`TASK_SETTINGS`, whose points
#: they replace): the sampler's time there is mostly fixed costs. Validation heads moved and acquired at 4x4x5 mm
#: (``coarse:10000``-``10003``, docs/tune_coarse_kspace_r*.md; docs/results.md, "Coarse scans centre"):
#:
#: - ``posterior.align`` False: the estimate on the 2 mm working grid costs 8-13 s, 3-5x the whole centred
#:   reconstruction, for +0.08 dB at R=4 (37.26 against 37.18).
#: - ``posterior.steps`` 20: R=4 0.68x CS's time against 1.07x at 50 steps, for 0.40 dB (36.78 against 37.18; the
#:   worst volume still +2.48 over CS).
#: - ``posterior.latent_fit_iters`` 0 and ``closing.restarts`` 0: at R=8 the fit through the 2 mm decoder is two thirds
#:   of the time (9.7 s per volume with the fit and the restart pass, 3.1 without the fit, 1.9 without either; CS
#:   3.5): only without both is the prior within 0.7x CS's time, for 0.67 dB (29.35 -> 28.68; the worst volume +2.04
#:   -> +1.39 over CS).
_COARSE: dict[str, tuple[tuple[float, float | bool | str], ...]] = {
    "posterior.align": ((1.0, False),), "posterior.steps": ((1.0, 20),), "posterior.latent_fit_iters": ((1.0, 0),),
    "closing.restarts": ((1.0, 0),),
}
#: The settings of a small field of view in k-space (the other tasks keep theirs): the placement alone (~1.4 s of
#: registration) is about CS's whole time on a volume this small. Validation parts of moved heads, 33x41x25 voxels at
#: 2 mm, R=4 (``part:10000``-``10005``, docs/tune_small_kspace_r4.md; docs/results.md, "Small parts of a brain
#: centre"): CS 32.00 dB / SSIM 0.9614; aligned, 50 steps, 10 closing iterations (the whole-head settings) 34.56 /
#: 0.9872 in 2.8x CS's time; centred, 20 steps, 2 iterations 34.67 / 0.9868 in 0.7x (worst volume +1.93 over CS).
#: More closing iterations pull a part towards CS's blocks there (5 / 10: 34.64 / 0.9820, 34.26 / 0.9784). The std
#: map's scale for 90% coverage there, 8 samples: 2.78 (docs/tune_std_small_r4.md; whole heads' R=4 2.19).
_SMALL: dict[str, tuple[tuple[float, float | bool | str], ...]] = {
    "posterior.align": ((1.0, False),), "posterior.steps": ((1.0, 20),), "closing.iters": ((1.0, 2),),
    "posterior.std_scale": ((1.0, 2.78),),
}

#: The settings of a small field of view in denoising: the prior is blended with BM4D instead of noise2self, whose
#: self-supervised net has few voxels to learn from there (a 33x41x25 part: 34 k). Validation parts of moved heads
#: (``part:10000``-``10011``, 66x82x50 mm at 2 mm, Rician 5%; docs/tune_small_denoise.md): BM4D 30.55 / 30.07 dB
#: on the two halves, noise2self 30.30 / 29.58, the prior blended with noise2self at 0.02 31.52 / 31.03 (the worst
#: volume 0.72 dB under BM4D), with BM4D at 0.01 31.70 / 31.15 (the worst volume ties BM4D), at 0.02 31.74 / 31.15
#: (the worst 0.28 under BM4D). The std map's scale for 90% coverage there, 8 samples, with noise2self's error
#: variance for BM4D's estimate (``reconstruct.classical_estimate``): 1.17 (docs/tune_std_small_denoise.md; whole
#: volumes 1.04).
_SMALL_DENOISE: dict[str, tuple[tuple[float, float | bool | str], ...]] = {
    "closing.classical": ((1.0, "bm4d"),), "closing.image_agreement": ((1.0, 0.01),),
    "posterior.std_scale": ((1.0, 1.17),),
}

TASK_SETTINGS: dict[str, dict[str, tuple[tuple[float, float | bool | str], ...]]] = {
    "kspace": {
        "posterior.steps": ((4.0, 50),),
        "posterior.t_start": ((4.0, 0.1),),
        "posterior.prior_error": ((4.0, 0.1),),
        "posterior.std_scale": ((4.0, 2.19), (8.0, 3.04)),
        "closing.anchor": ((4.0, 0.1), (8.0, 0.2)),
        "closing.restarts": ((4.0, 0), (8.0, 1)),
        "closing.iters": ((4.0, 10),),
        "posterior.latent_fit_iters": ((4.0, 0), (8.0, 6)),
        "posterior.keep_detail": ((4.0, True),),
        "posterior.align": ((4.0, True), (8.0, False)),
        "closing.air": ((4.0, 4.0), (8.0, 10.0)), "closing.air_floor": ((4.0, 0.05),),
        "closing.air_erode": ((4.0, 2),), "closing.air_blur": ((4.0, 0.0),),
        "posterior.classical_start": ((4.0, False),), "closing.spin": ((4.0, 8),),
    },
    "denoise": {
        "posterior.steps": ((1.0, 50),),
        "posterior.t_start": ((1.0, 0.5),), "posterior.prior_error": ((1.0, 0.03),), "posterior.std_scale": ((1.0, 1.04),),
        "closing.restarts": ((1.0, 0),), "closing.iters": ((1.0, 30),), "posterior.latent_fit_iters": ((1.0, 0),),
        "posterior.keep_detail": ((1.0, False),), "posterior.align": ((1.0, False),),
        "closing.air": ((1.0, 1.0),), "closing.air_floor": ((1.0, 0.2),), "closing.air_erode": ((1.0, 0),),
        "closing.air_blur": ((1.0, 1.5),),
        "closing.image_agreement": ((1.0, 0.02),), "posterior.classical_start": ((1.0, False),),
        "closing.classical": ((1.0, "noise2self"),), "closing.spin": ((1.0, 0),),
    },
    "superres": {
        "posterior.steps": ((1.0, 50),),
        "posterior.t_start": ((1.0, 0.06),), "posterior.prior_error": ((1.0, 0.03),), "posterior.std_scale": ((1.0, 1.15),),
        "closing.restarts": ((1.0, 0),), "closing.iters": ((1.0, 30),), "posterior.latent_fit_iters": ((1.0, 0),),
        "posterior.keep_detail": ((1.0, True),), "posterior.align": ((1.0, False),),
        "closing.air": ((1.0, 0.0),), "closing.air_floor": ((1.0, 0.1),), "closing.air_erode": ((1.0, 2),),
        "closing.air_blur": ((1.0, 0.0),),
        "closing.image_agreement": ((1.0, 0.002),), "posterior.classical_start": ((1.0, True),),
        "closing.classical": ((1.0, "selfsim"),), "closing.spin": ((1.0, 0),),
    },
}


#: Settings of an acquisition regime, per task (a task a regime does not list keeps its own): each replaces the
#: task's points of the settings it names; of a problem's regimes (:func:`acquisition_regimes`) the first that names
#: a setting sets it.
REGIME_SETTINGS: dict[str, dict[str, dict[str, tuple[tuple[float, float | bool | str], ...]]]] = {
    "coarse": {task: _COARSE for task in TASK_SETTINGS},
    "small": {"kspace": _SMALL, "denoise": _SMALL_DENOISE},
}
assert all(set(settings) <= set(TASK_SETTINGS[task]) for r in REGIME_SETTINGS.values() for task, settings in r.items())
#: The classical methods each task's prior may be blended with (``closing.classical``): the image tasks', whose
#: settings name a partner; k-space's result is never blended.
BLEND_METHODS: dict[str, tuple[str, ...]] = {t: CLASSICAL_METHODS[t] for t, s in TASK_SETTINGS.items()
                                             if "closing.classical" in s}


def acquisition_regimes(voxel_mm3: float, fov_fraction: float | None = None) -> tuple[str, ...]:
    """The acquisition regimes (keys of :data:`REGIME_SETTINGS`) of voxels of ``voxel_mm3`` mm^3 over a field of view
    ``fov_fraction`` of the model grid's (None: no model, no "small"): ``"coarse"`` from :data:`COARSE_VOXEL_MM3`,
    ``"small"`` below :data:`SMALL_FOV_FRACTION`."""
    small = fov_fraction is not None and fov_fraction < SMALL_FOV_FRACTION
    return ("coarse",) * (voxel_mm3 >= COARSE_VOXEL_MM3) + ("small",) * small


def task_setting(task: str, name: str, factor: float = 1.0, regimes: tuple[str, ...] = ()) -> float | int | str:
    """The value of setting ``name`` (``section.field``, as in ``--set``) that ``task`` uses at undersampling
    ``factor`` (``regimes``: the acquisition's, :data:`REGIME_SETTINGS` first): the points, linearly interpolated,
    held constant past the ends; a setting whose points are all ints (a count) is rounded to the nearest int, one
    whose points are all bools is a bool, one whose points are names (a method) is the last point's at or below
    ``factor`` (the first point's below them all)."""
    points = sorted(next((REGIME_SETTINGS[r][task][name] for r in regimes if name in REGIME_SETTINGS[r].get(task, {})),
                         TASK_SETTINGS[task][name]))
    if all(isinstance(v, str) for _, v in points):  # a name: the last point's at or below the factor
        return next((v for f, v in reversed(points) if f <= factor), points[0][1])
    value = points[0][1] if factor <= points[0][0] else points[-1][1]
    for (f0, v0), (f1, v1) in zip(points, points[1:]):
        if f0 < factor <= f1:
            value = v0 + (v1 - v0) * (factor - f0) / (f1 - f0)
    if all(isinstance(v, bool) for _, v in points):
        return bool(round(value))
    return round(value) if all(isinstance(v, int) for _, v in points) else value


def with_task_settings(section, name: str, task: str, factor: float = 1.0, regimes: tuple[str, ...] = ()):
    """The config ``section`` (a dataclass named ``name`` in ``--set``: "posterior", "closing") with each field it
    leaves None that :data:`TASK_SETTINGS` has for ``task`` filled in at ``factor`` (``regimes``: the acquisition's
    first, :data:`REGIME_SETTINGS`); explicit values stay."""
    fill = {key: task_setting(task, f"{name}.{key}", factor, regimes) for key in (k.split(".", 1)[1] for k in TASK_SETTINGS[task]
            if k.startswith(f"{name}.")) if getattr(section, key) is None}
    return dataclasses.replace(section, **fill) if fill else section


SAMPLERS: tuple[str, ...] = ("dds", "prior", "dps")
