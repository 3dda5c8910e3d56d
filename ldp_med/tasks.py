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
#: Classical everywhere: the shipped prior beats them on the synthetic test subjects (k-space +0.2-0.4 dB over CS,
#: denoise +1.7 dB over NLM) but not on heads with skull (docs/results.md, "The shipped shortcut prior").
DEFAULT_METHOD: dict[str, str] = {"kspace": "cs", "denoise": "nlm", "superres": "cubic"}
SAMPLERS: tuple[str, ...] = ("dds", "prior", "dps")
