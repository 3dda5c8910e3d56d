"""The one registry of task and method names (the CLI, configs, the MONAI integration and scripts import it).

Tasks: ``kspace`` (undersampled multi-coil k-space), ``denoise`` (a noisy volume), ``superres``
(thick slices). Each has classical methods and the two latent-prior methods; the first classical
method listed is not necessarily the default: :data:`DEFAULT_METHOD` is.

Posterior samplers (``PosteriorConfig.method``): ``dds`` (alias ``prior``) and ``dps``. The reconstruct
method ``prior`` runs the sampler that ``PosteriorConfig.method`` names; ``dps`` always runs DPS.
"""

from __future__ import annotations

TASKS: tuple[str, ...] = ("kspace", "denoise", "superres")
PRIOR_METHODS: tuple[str, ...] = ("prior", "dps")
CLASSICAL_METHODS: dict[str, tuple[str, ...]] = {
    "kspace": ("zero-filled", "cs", "tv"),
    "denoise": ("nlm", "bm4d"),
    "superres": ("cubic",),
}
METHODS: dict[str, tuple[str, ...]] = {t: CLASSICAL_METHODS[t] + PRIOR_METHODS for t in TASKS}
ALL_METHODS: tuple[str, ...] = tuple(dict.fromkeys(m for t in TASKS for m in METHODS[t]))
#: k-space: the prior, above CS on every volume measured (template and 8 test subjects +0.26 to +0.68 dB, heads with
#: skull +0.10 to +0.45, real scans that packages ship +0.14 to +0.30) in 0.13-0.27x CS's time on 2 mm volumes
#: (docs/results.md, "Sampler settings per task"). Denoise: the prior, above NLM on every volume measured
#: (synthetic +1.9 to +2.4 dB, heads with skull +1.6 / +1.7, real scans -0.01 / +1.4; docs/results.md, "Agreement
#: with the classical estimate"). Superres stays cubic: the prior is above it on synthetic brains (+0.7 to +2.2 dB) but
#: below it on heads with skull by 0.3-0.6 dB (docs/results.md, "Super-resolution's warm start").
DEFAULT_METHOD: dict[str, str] = {"kspace": "prior", "denoise": "prior", "superres": "cubic"}
#: The classical method each task's prior is measured against (docs/results.md) and, for the image tasks, blended
#: into the result where the prior disagrees with it (``closing.image_agreement``).
BASELINE_METHOD: dict[str, str] = {"kspace": "cs", "denoise": "nlm", "superres": "cubic"}
#: The std map's scale per task (``posterior.std_scale`` None) as (undersampling factor, scale) points, linearly
#: interpolated and held constant past the ends (the image tasks have factor 1): calibrated on validation subjects
#: so that ``|error| <= 1.645 std`` holds for 90% of head voxels with ``--samples 8`` (docs/results.md, "Std map").
#: The perturbed solves miss more of the error the fewer k-space samples there are, hence a scale per factor.
#: k-space re-calibrated at its session-22 sampler settings (docs/results.md, "Sampler settings per task").
STD_SCALE: dict[str, tuple[tuple[float, float], ...]] = {
    "kspace": ((4.0, 1.87), (8.0, 3.25)), "denoise": ((1.0, 1.32),), "superres": ((1.0, 6.65),),
}
#: The sampler settings of each task's prior where ``posterior.t_start`` / ``posterior.prior_error`` are None, tuned
#: on validation subjects 10000-10001 (denoise also 10002; docs/results.md, "Sampler settings per task"): k-space
#: leans on its data (prior_error 0.1) from a later warm start (t_start 0.3: 15 of 50 DDIM steps), R=8 +0.22 dB and
#: R=4 +0.05 dB over (0.03, 0.5) in 25% less time; denoise keeps (0.03, 0.5) (at (0.1, 0.3): -1.5 dB); super-resolution
#: starts at 0.06 (3 of 50 steps: +0.8 dB and SSIM above cubic's on validation; session 23, "Super-resolution's warm start").
POSTERIOR_DEFAULTS: dict[str, dict[str, float]] = {
    "kspace": {"t_start": 0.3, "prior_error": 0.1},
    "denoise": {"t_start": 0.5, "prior_error": 0.03},
    "superres": {"t_start": 0.06, "prior_error": 0.03},
}
SAMPLERS: tuple[str, ...] = ("dds", "prior", "dps")
