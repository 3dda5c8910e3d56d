"""Typed configs: dataclasses are the one source of truth; YAML and ``a.b=v`` overrides only fill fields.

Every field is type-checked when a config is built from a dict, a YAML file or overrides; unknown
keys are errors (nanoGPT's configurator, made strict).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from ldp_med.errors import ConfigError
from ldp_med.tasks import ALL_METHODS, BLEND_METHODS, SAMPLERS, TASKS

T = TypeVar("T")


def _check(tp: Any, value: Any, where: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_check(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_check(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {tp}")


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from a (nested) mapping, type-checking every field.

    Raises:
        ConfigError: on an unknown key, a wrong type, or a missing required field.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {k: _check(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(cfg: Any) -> dict:
    """A plain nested dict of a config dataclass (tuples become lists, for JSON/YAML)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_overrides(cfg: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Return a copy of ``cfg`` with ``a.b=value`` overrides applied (value parsed as YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a config section")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return from_dict(type(cfg), data)


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``: mappings merge key by key, anything else in ``top`` replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: str | os.PathLike, _seen: tuple[str, ...] = ()) -> dict:
    """The mapping of a YAML config file, with its ``base:`` file (relative to it) merged underneath.

    ``base: other.yaml`` makes a file a difference to another recipe: the other file's keys hold
    wherever this one does not set them (nested sections merge key by key). Bases may chain.
    """
    key = os.path.realpath(path)
    if key in _seen:
        raise ConfigError(f"{path}: base cycle ({' -> '.join(_seen + (key,))})")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    return _merge(_read_yaml(os.path.join(os.path.dirname(path), base), _seen + (key,)), data)


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides=()) -> T:
    """Defaults of ``cls``, filled from a YAML file (if given, with its ``base:`` chain), then ``overrides``."""
    data = _read_yaml(path) if path is not None else {}
    try:
        cfg = from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path else str(exc)) from None
    return apply_overrides(cfg, list(overrides)) if overrides else cfg


@dataclass
class SimulateConfig:
    """How ``ldp-med simulate`` degrades a clean volume."""

    task: str = "kspace"
    accel: float = 4.0
    mask: typing.Literal["poisson", "random-lines", "equispaced-lines"] = "poisson"
    calib: int = 12
    coils: int = 8
    noise: float = 0.005
    noise_kind: typing.Literal["gaussian", "rician"] = "rician"
    factor: int = 2
    axis: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {list(TASKS)}")


@dataclass
class BaselineConfig:
    """Classical reconstruction settings (lambdas tuned on synthetic validation volumes, docs/methods.md)."""

    cs_lambda: float = 0.002
    cs_iters: int = 60
    cs_wavelet: str = "db4"
    tv_lambda: float = 0.005
    tv_iters: int = 60
    espirit_calib: int | None = None  # None: the k-space file's calib attribute, else 12
    nlm_patch_size: int = 3
    nlm_patch_distance: int = 3
    nlm_h_factor: float = 0.8
    selfsim_context: int = 2  # patch half-width of self-similarity super-resolution (ldp_med.selfsim)
    selfsim_hidden: int = 128
    selfsim_steps: int = 2000
    noise2self_context: int = 2  # neighbourhood half-width of the blind-spot denoiser (ldp_med.noise2self)
    noise2self_hidden: int = 128
    noise2self_steps: int = 2000
    noise2self_residual_z: float = 1.0  # confidence of the residual window's growth (ldp_med.noise2self._posterior)

    def __post_init__(self) -> None:
        if self.espirit_calib is not None and self.espirit_calib < 2:
            raise ConfigError(f"baseline.espirit_calib must be >= 2 (or null for the file's calib), got {self.espirit_calib}")
        for name in ("selfsim_context", "selfsim_hidden", "selfsim_steps", "noise2self_context", "noise2self_hidden",
                     "noise2self_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"baseline.{name} must be >= 1, got {getattr(self, name)}")
        if not self.noise2self_residual_z >= 0:
            raise ConfigError(f"baseline.noise2self_residual_z must be >= 0, got {self.noise2self_residual_z}")


@dataclass
class PosteriorConfig:
    """Settings of the latent posterior sampler (plain types, for the strict config loader).

    Attributes:
        method: "dds" (default; "prior" is an alias) or "dps".
        steps: DDIM steps of the full schedule (over ``num_train_timesteps``). None: the task's (50; 20 for a coarse
            acquisition or a small field of view, ``ldp_med.tasks.REGIME_SETTINGS``, where the sampler's time is
            mostly fixed costs).
        t_start: fraction of the schedule actually run, from the warm start (1 = from pure noise);
            UNet evaluations per sample = ``round(steps * t_start)`` (x2 with guidance). None: the task's
            (``ldp_med.tasks.TASK_SETTINGS``, at the problem's undersampling factor, filled in when the sampler is made).
        dc_steps: DDS data-consistency steps (each one decode + one encode per sample), spread
            evenly over the run, excluding its first and last step (the closing solve covers the end).
        dc_lam: multiplies the noise-derived DC weight (see :func:`dc_weight`).
        prior_error: assumed relative error of the prior estimate, sets the DC weight with the noise. None:
            the task's, as ``t_start``.
        cg_iters: CG iterations per DC step (multi-coil k-space; other operators have closed forms).
            Each costs one normal operator ``A^H A``: ~1.1 s for 8 coils at 2 mm on one thread.
        final_dc: closing DC solve on the final image.
        final_cg_iters: CG iterations of the closing solve.
        samples: posterior samples drawn as one batch (>1 gives a std map).
        seed: seeds the warm-start noise and the DDIM noise.
        eta: DDIM stochasticity (0 = deterministic DDIM; DDS uses 0.85).
        label: class index to condition on; -1 = the null (unconditional) class.
        guidance: classifier-free guidance weight (used only with a label).
        dps_step: DPS step size on ``grad ||A x - y||`` (residual in model intensity units).
        phase_sigma: smoothing (voxels) of the k-space phase estimate.
        min_coverage: smallest fraction of the anatomy (the pseudo-inverse's foreground, not the air around it) the
            model grid must cover.
        max_nfe: refuse settings that would need more UNet evaluations per sample.
        coil_energy: multi-coil k-space is compressed to the fewest virtual coils that hold this fraction
            of the data's energy (SVD coil compression) for speed; 1 keeps every coil.
        std_scale: multiplies the std map (the spread of the samples' closing solves on perturbed data);
            None: the task's scale calibrated on validation subjects so that ``|error| <= 1.645 std`` holds
            for 90% of head voxels (``ldp_med.tasks.TASK_SETTINGS``; docs/results.md).
        std_smooth: the std map pools the samples' squared deviations over a Gaussian neighbourhood of
            this sigma (voxels) before the square root: 8 samples alone give a noisy std (0: no pooling).
        align: place the model grid by registration of the pseudo-inverse to the model space
            (:mod:`ldp_med.align`) instead of centring the field of view. None: the task's (``TASK_SETTINGS``: on
            for k-space up to R=4-6, where it measured better on validation heads, necks and partial fields of
            view; off at R=8, where it does not fit the time, and for denoising and super-resolution).
        crop: run the networks on the box of the model grid that holds the field of view (plus ``crop_margin``
            latent cells, corners on the UNet's down-sampling lattice) instead of the whole grid
            (:meth:`ldp_med.space.SpaceMap.cropped`); the same as the whole grid for a field of view that fills it.
        latent_fit_iters, latent_fit_lr: before the final decode, that many Adam steps (learning rate in the UNet's
            latent units) on each sample's latent toward the data through the decoder, in float32
            (:func:`ldp_med.sampling.posterior.fit_latents`); None: the task's (``TASK_SETTINGS``), 0: none.
        keep_detail: every model image mapped to the acquisition grid gets back what the grid's round trip
            loses of the last data-consistent image (``SpaceMap.detail``): the prior changes that image by its own
            change, interpolated, instead of replacing it with its interpolated self (matters where the grids do
            not line up: an aligned placement, a coarse or partial field of view). None: the task's (``TASK_SETTINGS``).
        classical_start: the image tasks: the first pass warm-starts from the task's classical estimate
            (``closing.classical``'s, computed once and blended in again by ``closing.image_agreement``)
            instead of the pseudo-inverse. None: the task's (``TASK_SETTINGS``: super-resolution, from the
            self-similarity estimate).
        autocast: ``"bf16"``: the networks run under ``torch.autocast`` in bfloat16 (on the device they are on;
            the shortcut maps and everything outside the networks stay float32); ``""``: float32; ``"auto"``:
            bfloat16 where the device computes it natively (``ldp_med.sampling.posterior.native_bf16``).
    """

    method: str = "dds"
    steps: int | None = None
    t_start: float | None = None
    dc_steps: int = 4
    dc_lam: float = 1.0
    prior_error: float | None = None
    cg_iters: int = 3
    final_dc: bool = True
    final_cg_iters: int = 10
    samples: int = 1
    seed: int = 0
    eta: float = 0.85
    label: int = -1
    guidance: float = 1.0
    dps_step: float = 1.0
    phase_sigma: float = 1.5
    min_coverage: float = 0.5
    max_nfe: int = 50
    coil_energy: float = 0.99
    std_scale: float | None = None
    std_smooth: float = 1.0
    align: bool | None = None
    crop: bool = True
    crop_margin: int = 2
    latent_fit_iters: int | None = None
    latent_fit_lr: float = 0.1
    keep_detail: bool | None = None
    classical_start: bool | None = None
    autocast: typing.Literal["", "bf16", "auto"] = "auto"

    def __post_init__(self) -> None:
        if self.method not in SAMPLERS:
            raise ConfigError(f"posterior.method {self.method!r} is not one of {list(SAMPLERS)}")
        checks = {
            "t_start": self.t_start is None or 0 < self.t_start <= 1,
            "prior_error": self.prior_error is None or self.prior_error > 0,
            "steps": self.steps is None or self.steps >= 1, "dc_steps": self.dc_steps >= 0, "dc_lam": self.dc_lam > 0,
            "cg_iters": self.cg_iters >= 0,
            "final_cg_iters": self.final_cg_iters >= 0, "samples": self.samples >= 1, "eta": self.eta >= 0,
            "label": self.label >= -1, "guidance": self.guidance >= 0, "dps_step": self.dps_step >= 0,
            "phase_sigma": self.phase_sigma >= 0, "min_coverage": 0 <= self.min_coverage <= 1,
            "max_nfe": self.max_nfe >= 1, "coil_energy": 0 < self.coil_energy <= 1,
            "std_scale": self.std_scale is None or self.std_scale > 0, "std_smooth": self.std_smooth >= 0,
            "crop_margin": self.crop_margin >= 0, "latent_fit_lr": self.latent_fit_lr > 0,
            "latent_fit_iters": self.latent_fit_iters is None or self.latent_fit_iters >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"posterior config: invalid value for {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


@dataclass
class ClosingConfig:
    """The closing solve after posterior sampling (:mod:`ldp_med.sampling.closing`), per sample.

    ``argmin_x 1/2 ||A x - y||^2 + anchor / 2 ||x - x_bar||^2 + mu ||W x||_1``: for k-space the weights ``mu``
    and ``anchor``; for denoise / superres ``mu = image_mu * noise_std`` and the weight ``image_anchor``. A weight
    of 0 is the CS objective (the floor); larger values trust the prior more.

    Defaults tuned on validation subjects 10000-10001 with the shipped prior (docs/methods.md): k-space
    ``anchor`` on the model's support (per undersampling factor: ``ldp_med.tasks.TASK_SETTINGS``); the anchored
    solve from the sample needs 30 iterations (converged: 40 and 60 give the same image), so the result is a fixed
    point of the anchored objective, not an early stop of CS (docs/tune_support_*.md; 15 iterations, with the
    agreement solve at 10, gain on validation but fall under CS on a head with skull and a real partial scan:
    docs/results.md, "An early stop, measured again"); started from the agreement's converged anchor-free solve
    (``from_free``) 10 iterations do, an early stop on CS's side (docs/results.md, "The anchored solve from the
    anchor-free one");
    denoise ``image_mu`` 16 and ``image_anchor`` 10 over the whole volume, retuned with the agreement blend on
    validation brains and synthetic heads (docs/tune_agreement_denoise*.md; 4 and 3 before the blend).

    Attributes:
        iters: FISTA iterations of the (anchored) closing solve (0: no closing solve). None: the task's
            (``ldp_med.tasks.TASK_SETTINGS``: k-space 10, warm-started from the agreement's anchor-free solve
            (``from_free``); the image tasks 30, warm-started from each sample).
        restarts: after the closing solve, sample again warm-started from its result (instead of the
            pseudo-inverse) and close again, this many times; the std map is the last pass's. None: the task's
            (``ldp_med.tasks.TASK_SETTINGS``: k-space 0 at R=4, 1 at R=8; the image tasks 0).
        anchor: anchor weight of k-space problems (relative to the data term); None: the task's at the mask's
            undersampling factor (``ldp_med.tasks.TASK_SETTINGS``: 0.1 at R=4, 0.2 at R=8). It is the weight per
            model voxel: an acquisition voxel smaller than the model's gets its volume's share (1 mm on the 2 mm
            model: 1/8; ``reconstruct._posterior``).
        mu: wavelet weight of k-space problems; None: the CS baseline's ``baseline.cs_lambda``. (0.003 lifts
            validation brains at R=4 by 0.3 dB but costs heads with skull as much: docs/tune_kspace_closing_mu_r4.md.)
        image_anchor: anchor weight of the image tasks (denoise, superres).
        coil_energy: k-space is compressed to the SVD virtual coils holding this fraction of the energy
            (1: every coil, the CS baseline's data term).
        image_mu: wavelet weight of the image tasks, in units of the noise std.
        anchor_support: k-space: anchor only where the prior knows anatomy (the model's ``support`` extra
            mapped to the acquisition grid: a per-voxel weight in [0, 1]); elsewhere (skull, neck, a field of
            view past the model grid) the result is the CS objective's. No effect for a model folder without
            ``support``.
        image_anchor_support: the same for the image tasks (off: on synthetic brains it costs denoise 1.4 dB,
            the anatomy outside the support is then only wavelet-denoised).
        image_agreement: image tasks: each closed sample is blended with the classical estimate
            (``classical``'s) where the two disagree, with this fraction of the
            classical estimate's 99th percentile as tolerance (:func:`ldp_med.sampling.closing.agreement_blend`);
            0: the closed sample alone. None: the task's (``ldp_med.tasks.TASK_SETTINGS``; denoise 0.02, superres
            0.002, tuned on validation volumes, docs/tune_noise2self_denoise.md, docs/tune_superres_selfsim_agreement.md).
        classical: image tasks: the classical method (one of the task's, ``ldp_med.tasks.BLEND_METHODS``) whose
            estimate the closed samples are blended with (``image_agreement``) and, with ``posterior.classical_start``,
            the sampler starts from. None: the task's (``ldp_med.tasks.TASK_SETTINGS``: denoise noise2self, BM4D for a
            small field of view; super-resolution selfsim).
        agreement: k-space: the anchor weight of each voxel is scaled by how well the samples agree there with
            the data's own solve from them (the closing objective with anchor 0: CS warm-started from each
            sample), ``exp(-d^2 / (2 t^2))`` with ``t`` this fraction of that solve's 99th percentile (as
            ``image_agreement``); 0: off. Costs one more solve per sample. 0.03: validation brains and synthetic
            heads 10000-10001, R=4 and R=8 (docs/tune_kspace_agreement_r*.md: +0.03 / +0.04 dB on average, the worst
            volume's margin over CS +0.04 / +0.13).
        agreement_iters: FISTA iterations of that anchor-free solve. The protection needs it converged: at 10
            validation brains and heads lose only 0.02 dB for a quarter of the time, but a head with skull and a
            real partial scan then fall under CS (docs/results.md, "An early stop, measured again").
        from_free: k-space with ``agreement``: the anchored solve starts from that anchor-free solve (the CS
            objective's solution from the sample) instead of the sample, so stopping it early leaves the result
            between CS and the anchored optimum, never nearer the sample than the optimum is; False: from the
            sample (30 iterations starting there are needed: at 15 a head with skull falls 0.8 dB under CS).
        air: the air around the head (:func:`ldp_med.sampling.closing.air_gain`): where the closed image is below
            ``air_floor`` and connected to the field of view's faces, each voxel keeps only the part of its energy
            that the noise does not explain, ``sqrt(max(E - air N, 0) / E_out)`` (power subtraction; ``N`` the noise
            energy, estimated per voxel: k-space from a short solve on data perturbed by fresh noise of the problem's
            level, the image tasks ``2 sigma^2`` of a magnitude image); 0: off. None: the task's
            (``ldp_med.tasks.TASK_SETTINGS``).
        air_floor: that threshold, a fraction of the closed image's 99th percentile (Gaussian-smoothed by
            ``air_smooth``); None: the task's.
        air_smooth: the Gaussian width (voxels) of the air step's smoothing: of the image its threshold reads and
            of the energies its gains compare.
        air_blur: after the gains, each voxel of the air becomes the Gaussian mean (this many voxels) of the air
            around it (``ldp_med.sampling.closing.air_blur``): what the air keeps (a reference's own noise, a faint
            signal) is better estimated by its mean than in the noise's pattern; 0: off. None: the task's (denoise 1.5
            since session 50, else 0).
        air_erode: voxels the air is eroded by, away from the head, before its gains apply (a margin that keeps
            the head's faint edge out of the air); None: the task's (denoise 0 since session 48, else 2).
        restart_iters: in the passes before the last (``restarts``), whose closed image only warm-starts the next
            pass, the anchored solve alone (no agreement solve) for this many iterations, from the sample;
            None: the same closing as the last pass.
        spin: cycle spinning of every closing solve's wavelet term (:func:`ldp_med.sampling.closing.closing_solve`):
            random circular shifts in ``[0, spin)`` voxels per iteration, seeded by ``posterior.seed``; 0: off (the
            CS baseline's decimated wavelets). None: the task's (``ldp_med.tasks.TASK_SETTINGS``).
    """

    iters: int | None = None
    restarts: int | None = None
    anchor: float | None = None
    mu: float | None = None
    image_anchor: float = 10.0
    coil_energy: float = 1.0
    image_mu: float = 16.0
    anchor_support: bool = True
    image_anchor_support: bool = False
    image_agreement: float | None = None
    classical: str | None = None
    agreement: float = 0.03
    agreement_iters: int = 30
    from_free: bool = True
    restart_iters: int | None = 5
    air: float | None = None
    air_floor: float | None = None
    air_smooth: float = 1.5
    air_blur: float | None = None
    air_erode: int | None = None
    spin: int | None = None

    def __post_init__(self) -> None:
        weights = (self.anchor or 0.0, self.mu or 0.0, self.image_anchor, self.image_mu, self.image_agreement or 0.0,
                   self.agreement, self.air or 0.0, self.air_floor or 0.0, self.air_smooth,
                   self.air_blur or 0.0)
        counts = (self.iters or 0, self.agreement_iters, self.restarts or 0, self.restart_iters or 0, self.spin or 0,
                  self.air_erode or 0)
        if min(counts) < 0 or min(weights) < 0 or not 0 < self.coil_energy <= 1:
            raise ConfigError("closing: need iters >= 0, agreement_iters >= 0, restarts >= 0, restart_iters >= 0, "
                              "spin >= 0, air_erode >= 0, air_smooth >= 0, "
                              "air_blur >= 0, anchor >= 0, mu >= 0, 0 < coil_energy <= 1, image_mu >= 0, "
                              "image_agreement >= 0, agreement >= 0, air >= 0, air_floor >= 0; "
                              f"got {self}")
        blendable = {m for methods in BLEND_METHODS.values() for m in methods}
        if self.classical is not None and self.classical not in blendable:
            raise ConfigError(f"closing.classical {self.classical!r} is not one of {sorted(blendable)}")


@dataclass
class ReconstructConfig:
    """What ``ldp-med reconstruct`` does with one input (``ldp_med.tasks`` names the tasks and methods).

    Attributes:
        method: a method of the task; None means the task's default (``ldp_med.tasks.DEFAULT_METHOD``).
            ``prior`` runs the sampler ``posterior.method`` names; ``dps`` always runs latent DPS.
        task: a task, or "auto" (k-space for an .h5 container; a volume: superres when one axis is 1.5x thicker than
            the others, else denoise; ``ldp_med.reconstruct.volume_task``).
        factor, axis: slice-thickness factor and slice axis (superres); None reads them from the input's voxel sizes
            (:func:`ldp_med.problems.slice_geometry`: the thickest axis and its thickness over the in-plane size,
            else 2 and 2).
    """

    method: str | None = None
    task: str = "auto"
    factor: int | None = None
    axis: int | None = None
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    closing: ClosingConfig = field(default_factory=ClosingConfig)

    def __post_init__(self) -> None:
        if self.task not in ("auto", *TASKS):
            raise ConfigError(f"task {self.task!r} is not one of {['auto', *TASKS]}")
        if self.method is not None and self.method not in ALL_METHODS:
            raise ConfigError(f"method {self.method!r} is not one of {list(ALL_METHODS)}")
        classical = self.closing.classical
        if classical is not None and self.task != "auto" and classical not in BLEND_METHODS.get(self.task, ()):
            raise ConfigError(f"closing.classical {classical!r} is not a classical method of task {self.task!r} "
                              f"({', '.join(BLEND_METHODS.get(self.task, ())) or 'its result is never blended'})")
        if (self.factor is not None and self.factor < 2) or self.axis not in (None, 0, 1, 2):
            raise ConfigError(f"factor must be >= 2 and axis 0, 1 or 2 (got {self.factor}, {self.axis})")


@dataclass
class VAEConfig:
    """MONAI ``AutoencoderKL`` (3-D, one channel in/out); ``len(channels) - 1`` halvings per axis.

    ``num_res_blocks``: one count for every level, or one per level. ``shortcut``: the encoder and decoder
    learn residuals around space-to-channel maps (:class:`ldp_med.models.shortcut.ShortcutAutoencoderKL`);
    absent from model folders saved before it existed, which therefore load as plain ``AutoencoderKL``.
    ``shortcut_map``: the fixed map, ``"pca"`` (the training blocks' principal components, fitted when training
    starts and stored with the weights; the shipped model's) or ``"average"`` (DC-AE's; folders saved before the
    choice existed load with it).
    """

    channels: tuple[int, ...] = (8, 16, 32)
    latent_channels: int = 32
    num_res_blocks: int | tuple[int, ...] = 1
    norm_num_groups: int = 8
    attention_levels: tuple[bool, ...] = (False, False, False)
    with_nonlocal_attn: bool = False
    shortcut: bool = True
    shortcut_map: typing.Literal["average", "pca"] = "pca"


@dataclass
class UNetConfig:
    """MONAI ``DiffusionModelUNet`` on the latent grid; ``num_class_embeds`` counts the null class.

    ``text_in_time_embedding``: the caption embedding also enters every residual block, through a linear
    map added to the class embedding (:class:`ldp_med.models.builders.TextEmbeddingUNet`), not only
    through the cross-attention of the attention levels.
    """

    channels: tuple[int, ...] = (32, 48, 48)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    num_class_embeds: int | None = 5
    with_conditioning: bool = True
    cross_attention_dim: int | None = 384
    text_in_time_embedding: bool = True


@dataclass
class SchedulerConfig:
    """MONAI noise scheduler used for training (DDPM) and, with the same betas, DDIM sampling."""

    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: typing.Literal["epsilon", "v_prediction", "sample"] = "v_prediction"


#: Classifier-free guidance weight of `ldp-med generate` and :func:`ldp_med.generate` (docs/results.md, issue 5).
DEFAULT_GUIDANCE = 7.0


@dataclass
class ModelConfig:
    """Everything a model folder's ``config.json`` holds: architecture, model grid, scale factor, classes."""

    grid: tuple[int, int, int] = (96, 112, 96)
    voxel_mm: float = 2.0
    affine: tuple[tuple[float, ...], ...] = ()
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    latent_scale_factor: float = 1.0
    # the latents the UNet sees: (z - latent_shift) mapped per channel (* latent_channel_scale[c]) or, with
    # latent_mixing (a C x C matrix, rows = output channels), across channels (M @ (z - shift): whitening), then
    # * latent_scale_factor; empty tuples mean no shift / unit scale / no mixing (models saved before these fields)
    latent_shift: tuple[float, ...] = ()
    latent_channel_scale: tuple[float, ...] = ()
    latent_mixing: tuple[tuple[float, ...], ...] = ()
    class_names: tuple[str, ...] = ("T1w", "T2w", "PD", "FLAIR")
    text_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # the sentence encoder a text-conditioned UNet was trained with ("" = none)
    training_data: str = ""
    ldp_med_version: str = ""

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.vae_factor
        return (self.vae.latent_channels, *(n // f for n in self.grid))


@dataclass
class LoopConfig:
    """The optimisation loop shared by VAE and prior training (AdamW, warm-up then cosine decay)."""

    steps: int = 3000
    batch_size: int = 4
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    threads: int = 0
    autocast: typing.Literal["", "bf16"] = ""  # "bf16": CUDA autocast of the forward pass (GPU recipes)


@dataclass
class DataConfig:
    """Training data: the synthetic cohort (default) or a folder / list of healthy scans.

    ``noise_free`` (synthetic cohort only): also load each subject's noise-free image, so that the prior learns
    noise-free anatomy (it encodes those) and the VAE learns to return a noisy input's noise-free expectation.
    ``sharp`` (synthetic cohort only): also the first ``sharp`` training subjects rendered from the 1 mm template
    (``synthetic.make_subject(sharp=True)``: the same anatomy without the 2 mm interpolation blur), cached in
    ``<cache_dir>/sharp``.
    ``heads`` (synthetic cohort only): also the first ``heads`` training subjects inside a synthetic skull and scalp
    (``synthetic.make_subject(head=True)``), cached in ``<cache_dir>/heads``.
    """

    synthetic: int = 200
    folder: str = ""
    cache_dir: str = "cache/cohort"
    noise_free: bool = False
    sharp: int = 0
    heads: int = 0


@dataclass
class VAETrainConfig:
    """``ldp-med train vae``: random 3-D patches, then (the last ``whole_volume_steps``) whole volumes.

    GroupNorm normalises over the whole input, so a VAE trained on brain patches only sees different
    statistics on a whole volume (75% background); a short whole-volume phase at the end fixes that.

    ``decoder_only``: fine-tune the decoder of ``--init``'s VAE with its encoder frozen, on the encoder's
    posterior means (what ``autoencode`` and the prior use): the latents do not move, so a prior trained on
    them stays valid. ``posterior_mean``: decode the posterior mean rather than a sample of the posterior
    (implied by ``decoder_only``), for a fine-tune of the whole VAE towards what inference decodes.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    patch: int = 32
    foreground_fraction: float = 0.7
    whole_volume_steps: int = 0
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    kl_weight: float = 1e-7
    decoder_only: bool = False
    posterior_mean: bool = False


@dataclass
class PriorTrainConfig:
    """``ldp-med train prior``: latent DDPM on cached latents, class condition dropped for CFG.

    With ``model.unet.with_conditioning`` the captions' sentence embeddings also enter through
    cross-attention: ``cond_dropout`` drops class and caption together (the null condition of CFG),
    and ``text_only`` of the remaining samples drop only the class, so a prompt alone is in distribution.
    ``caption_within_class``: each draw takes a random caption of the item's class (captions that describe
    the class only, like the synthetic cohort's: its pool is every wording the cohort can carry; other
    data: the distinct captions of each class), so the UNet sees every wording with every image instead
    of one fixed caption per image.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cond_dropout: float = 0.15
    text_only: float = 0.5
    caption_within_class: bool = True
    # how the UNet's latents are normalised: "channel" standardises each channel; "whiten" (ZCA) also decorrelates
    # them, so components with little variance (the sub-voxel detail of a shortcut VAE) reach unit variance too
    latent_norm: typing.Literal["channel", "whiten"] = "channel"
    # the metric of the diffusion loss: "diffusion" weighs every channel of the normalised latent alike; "latent"
    # measures the error after mapping it back to the VAE's latent units (the normalisation undone, scaled to the same
    # mean), where an error costs the decoded image about what it costs the latent: after whitening, the first
    # principal component (the coarse image) gets its weight back from the detail components (docs/methods.md)
    loss_metric: typing.Literal["diffusion", "latent"] = "diffusion"
    # with loss_metric "latent": the share f of the plain (white) loss mixed into its square, (1 - f) G + f I. The
    # pure latent metric leaves the detail components untrained (weight ~1e-4 of the first): sampled from noise,
    # they keep unit noise where the training latents are constant (docs/results_vae_shortcut.md, session 13)
    loss_metric_floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.loss_metric_floor <= 1:
            raise ConfigError(f"loss_metric_floor must be in [0, 1], got {self.loss_metric_floor}")
