"""Latent posterior sampling: a diffusion prior in VAE latent space plus data consistency on the acquisition grid.

A sampler is assembled from parts (design.md, convention 2):

- the prior: VAE + latent UNet (:class:`Prior`) and MONAI's DDIM scheduler with the training betas
  (every step, Tweedie estimate and re-noising is ``sched.step`` / ``sched.add_noise``);
- a :class:`SpaceMap` between the acquisition grid and the model grid (:mod:`ldp_med.space`);
- a data-consistency rule (:mod:`ldp_med.sampling.consistency`) holding ``A``, ``y`` and ``lam``;
- an update rule that couples them at each step: :class:`DDSUpdate` or :class:`DPSUpdate`.

Named methods are thin constructors (:func:`make_sampler`):

- ``dds`` (default, alias ``prior``): DDIM in latent space; at a few steps the Tweedie estimate
  ``z0`` is decoded, moved to the acquisition grid, pulled toward the data by the DC rule (a few CG
  iterations of ``argmin ||A x - y||^2 + lam ||x - D(z0)||^2``), moved back, re-encoded, and the DDIM
  step continues from the corrected ``z0`` with the network's noise estimate (DDS, Chung et al.,
  ICLR 2024; ReSample, Song et al., ICLR 2024). No back-propagation through the networks.
- ``dps``: latent DPS: after each DDIM step, a gradient step on ``z_t`` along
  ``-grad ||A(D(z0(z_t))) - y||`` through the UNet and the decoder (Chung et al., ICLR 2023, in
  latent space as in PSLD, Rout et al. 2023, without PSLD's gluing term). A decode and a backward
  pass per step: much slower, kept for comparison.

Both warm-start (Come-Closer-Diffuse-Faster, Chung et al., CVPR 2022): the pseudo-inverse image is
encoded and noised to an intermediate step (``t_start``, a fraction of the schedule) instead of
starting from pure noise, and both end with a DC solve on the final image. ``samples`` posterior
samples run as one batch; the result is their mean and voxel-wise standard deviation.

Cost accounting (:class:`PosteriorResult`): ``nfe``, ``decodes`` and ``encodes`` count full-volume
network evaluations *per posterior sample* (a classifier-free-guided step counts 2 UNet evaluations).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from ldp_med.config import PosteriorConfig
from ldp_med.errors import ConfigError, InputError, LdpError
from ldp_med.io.volume import Volume
from ldp_med.models.builders import build_ddim_scheduler, check_model_config
from ldp_med.models.conditioning import guided_prediction, null_class
from ldp_med.models.pretrained import Prior
from ldp_med.problems import Problem
from ldp_med.sampling.consistency import ImageDC, KSpaceDC, dc_weight
from ldp_med.space import SpaceMap
from ldp_med.tasks import SAMPLERS, with_task_settings

__all__ = ["PosteriorConfig", "PosteriorResult", "PosteriorSampler", "LatentNets", "DDSUpdate", "DPSUpdate",
           "UPDATES", "dc_indices", "fit_latents", "run_length", "check_prior", "for_task", "make_sampler", "reconstruct",
           "native_bf16", "settle_autocast"]


@dataclass
class PosteriorResult:
    """A posterior reconstruction on the acquisition grid.

    Attributes:
        mean: float32 (X, Y, Z) posterior mean magnitude, acquisition units.
        std: float32 (X, Y, Z) voxel-wise std over samples (``samples > 1``), else None.
        affine: (4, 4) RAS+ affine of the acquisition grid (the fine grid for superres).
        nfe, decodes, encodes: network evaluations per posterior sample.
        seconds: wall time of the whole run (all samples).
        method: the update rule's name.
        lam: DC weight used; noise_std: the noise level it came from.
        image: complex64 (X, Y, Z) mean of the complex DC solutions (k-space only), else None.
        samples: (B, X, Y, Z) each sample's final image: complex64 DC solutions (phase included) for
            k-space, float32 otherwise; what the closing solve (:mod:`ldp_med.sampling.closing`) refines.
        support: float32 (X, Y, Z) in [0, 1]: the model's ``Prior.support`` (where its training images had
            anatomy) on the acquisition grid, 0 outside the model grid; None for a model without one.
        alignment: the :class:`ldp_med.align.Alignment` of an aligned placement (``posterior.align``), else None.
    """

    mean: np.ndarray
    std: np.ndarray | None
    affine: np.ndarray
    nfe: int
    decodes: int
    encodes: int
    seconds: float
    method: str
    lam: float
    noise_std: float
    image: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    samples: np.ndarray | None = None
    support: np.ndarray | None = None
    alignment: object = None

    def volume(self) -> Volume:
        """The mean as a :class:`Volume` (acquisition grid and affine)."""
        return Volume(self.mean, self.affine, {**self.meta, "method": self.method})

    def std_volume(self) -> Volume | None:
        """The std map as a :class:`Volume`, or None."""
        return None if self.std is None else Volume(self.std, self.affine, {**self.meta, "method": f"{self.method}-std"})


def check_prior(prior: Prior) -> None:
    """Raise :class:`InputError` (naming the model folder) when the prior cannot reconstruct.

    Checks: a UNet is present; the grid fits the VAE / UNet down-sampling; the VAE maps 1 channel to
    1 channel; VAE latent channels, UNet channels and the config agree.
    """
    cfg, where = prior.config, prior.path
    if prior.unet is None:
        raise InputError(where, "the model has no diffusion UNet (unet.safetensors); train the prior first")
    try:
        check_model_config(cfg)
    except ConfigError as exc:
        raise InputError(where, f"model does not fit: {exc}") from None
    enc_in = getattr(getattr(prior.vae, "encoder", None), "in_channels", 1)
    dec_out = getattr(getattr(prior.vae, "decoder", None), "out_channels", 1)
    if enc_in != 1 or dec_out != 1:
        raise InputError(where, f"the VAE maps {enc_in} -> {dec_out} channels; reconstruction needs single-channel images")
    lat = cfg.vae.latent_channels
    got = {"VAE latent": getattr(prior.vae, "latent_channels", lat), "UNet input": getattr(prior.unet, "in_channels", lat),
           "UNet output": getattr(prior.unet, "out_channels", lat)}
    wrong = {k: v for k, v in got.items() if v != lat}
    if wrong:
        raise InputError(where, f"channels do not fit: config has {lat} latent channels, networks have "
                                + ", ".join(f"{k} {v}" for k, v in wrong.items()))


def _model_output(sched, z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network output that, for MONAI's DDIM step, means Tweedie estimate ``z0`` and noise ``eps``."""
    kind = sched.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return z0
    return sched.get_velocity(z0, eps, t)  # v = sqrt(ab) eps - sqrt(1 - ab) z0


def run_length(cfg: PosteriorConfig) -> int:
    """Number of DDIM steps run from the warm start: ``round(steps * t_start)``, at least 1."""
    return max(1, min(cfg.steps, round(cfg.steps * cfg.t_start)))


@dataclass
class _State:
    """Per-run state shared by the sampler and its update rule."""

    sched: object
    gen: torch.Generator
    labels: torch.Tensor
    fallback: torch.Tensor  # acquisition-grid image(s) used where the model grid does not reach
    nfe: int = 0
    decodes: int = 0
    encodes: int = 0
    keep_detail: bool = False  # PosteriorConfig.keep_detail
    detail: torch.Tensor | None = None  # SpaceMap.detail of fallback (with keep_detail), else None

    def set_fallback(self, x: torch.Tensor, space: SpaceMap) -> torch.Tensor:
        """Make the acquisition image ``x`` the fallback, with its detail if ``keep_detail``; returns its model image
        ``space.to_model(x)`` (made once for both: the callers encode it)."""
        m = space.to_model(x)
        self.fallback = x
        self.detail = space.detail(x, m) if self.keep_detail else None
        return m

    def to_acq(self, space: SpaceMap, m: torch.Tensor, b: int | None = None) -> torch.Tensor:
        """``space.to_acq(m, fallback)`` plus the fallback's detail (if kept); ``b``: sample ``b``'s own."""
        pick = (lambda t: t if b is None or len(t) == 1 else t[b : b + 1])
        out = space.to_acq(m, pick(self.fallback))
        return out if self.detail is None else out + pick(self.detail)


@dataclass
class LatentNets:
    """The prior's network calls as update rules see them: counted, checked, one sample at a time.

    Attributes:
        prior: VAE + UNet + config.
        guidance: classifier-free guidance weight (used with a class label).
        evals_per_step: UNet evaluations one guided or unguided step costs (1 or 2).
    """

    prior: Prior
    guidance: float = 1.0
    evals_per_step: int = 1
    autocast: str = ""

    def _cast(self, device: torch.device):
        """The autocast context the networks run in (``autocast`` "bf16": bfloat16; else off)."""
        return torch.autocast(device.type, torch.bfloat16, enabled=self.autocast == "bf16")

    def predict(self, z: torch.Tensor, t: int, st: _State) -> torch.Tensor:
        tt = torch.full((len(z),), int(t), device=z.device, dtype=torch.long)
        with self._cast(z.device):
            pred = guided_prediction(self.prior, z, tt, st.labels, self.guidance).float()
        st.nfe += self.evals_per_step
        if not torch.isfinite(pred).all():
            raise LdpError(f"the diffusion UNet produced NaN/Inf at timestep {int(t)}")
        return pred

    def decode(self, zs: torch.Tensor, st: _State, count: bool = True) -> torch.Tensor:
        """Scaled latents (B, C, *latent) -> model images (B, 1, *grid) in [0, 1], one sample at a time."""
        zs = self.prior.from_diffusion(zs)
        with self._cast(zs.device):
            out = torch.cat([self.prior.vae.decode(zs[b : b + 1]).float() for b in range(len(zs))])
        if count:
            st.decodes += 1
        if not torch.isfinite(out).all():
            raise LdpError("the VAE decoder produced NaN/Inf")
        return out.float().clamp(0, 1)

    @torch.no_grad()
    def encode(self, m: torch.Tensor, st: _State) -> torch.Tensor:
        """Model images (B, 1, *grid) -> scaled latent means (B, C, *latent), one sample at a time."""
        with self._cast(m.device):
            z = torch.cat([self.prior.vae.encode(m[b : b + 1])[0].float() for b in range(len(m))])
        z = self.prior.to_diffusion(z)
        st.encodes += 1
        if not torch.isfinite(z).all():
            raise LdpError("the VAE encoder produced NaN/Inf")
        f = self.prior.config.vae_factor
        want = (self.prior.config.vae.latent_channels, *(n // f for n in m.shape[2:]))  # the grid it ran on (a crop)
        if tuple(z.shape[1:]) != want:
            raise InputError(self.prior.path, f"the VAE gives latents of shape {tuple(z.shape[1:])}, the config says "
                                              f"{want}: the model does not fit its grid")
        return z


class DDSUpdate:
    """DDS / ReSample-style step: hard data consistency on the decoded Tweedie estimate at chosen steps.

    Args:
        dc_at: indices (into the run's timesteps) of the steps with a DC correction.
        space: acquisition <-> model grid map.
        dc_rule: the data-consistency rule.
        eta: DDIM stochasticity.
    """

    name = "dds"

    def __init__(self, dc_at, space: SpaceMap, dc_rule: ImageDC, eta: float):
        self.dc_at = frozenset(int(i) for i in dc_at)
        self.space, self.dc_rule, self.eta = space, dc_rule, float(eta)

    @torch.no_grad()
    def __call__(self, net: LatentNets, st: _State, i: int, t: int, z: torch.Tensor) -> torch.Tensor:
        pred = net.predict(z, t, st)
        if i not in self.dc_at:
            return st.sched.step(pred, t, z, self.eta, st.gen)[0]
        _, z0 = st.sched.step(pred, t, z)  # eta 0: the Tweedie estimate, no noise drawn
        ab = st.sched.alphas_cumprod[t].to(z)
        eps = (z - ab.sqrt() * z0) / (1 - ab).sqrt()
        x = self.dc_rule(st.to_acq(self.space, net.decode(z0, st)))
        z0 = net.encode(st.set_fallback(x, self.space), st)
        tt = torch.full((len(z),), t, device=z.device, dtype=torch.long)
        # continue from the corrected z0 with the network's noise direction, MONAI doing the step
        zt = st.sched.add_noise(z0, eps, tt)
        return st.sched.step(_model_output(st.sched, z0, eps, tt), t, zt, self.eta, st.gen)[0]


class DPSUpdate:
    """Latent DPS step: DDIM step, then ``z_{t-1} -= step * grad_{z_t} ||A(D(z0(z_t))) - y|| / scale``.

    The residual is measured in model intensity units (divided by the intensity scale), so ``step``
    does not depend on the data's units. Samples are differentiated one at a time (decoder memory).
    """

    name = "dps"

    def __init__(self, step: float, space: SpaceMap, dc_rule: ImageDC, eta: float):
        self.step = float(step)
        self.space, self.dc_rule, self.eta = space, dc_rule, float(eta)

    def __call__(self, net: LatentNets, st: _State, i: int, t: int, z: torch.Tensor) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            pred = net.predict(z, t, st)
            z_prev, z0 = st.sched.step(pred, t, z, self.eta, st.gen)
            grad = torch.zeros_like(z)
            for b in range(len(z)):
                x = st.to_acq(self.space, net.decode(z0[b : b + 1], st, count=False), b)
                loss = self.dc_rule.residual(x).flatten().norm() / self.space.scale
                grad += torch.autograd.grad(loss, z, retain_graph=b < len(z) - 1)[0]
            st.decodes += 1
        if not torch.isfinite(grad).all():
            raise LdpError(f"latent DPS: non-finite gradient at timestep {t}")
        return (z_prev - self.step * grad).detach()


@dataclass
class PosteriorSampler:
    """The posterior sampler, assembled whole from parts by :func:`make_sampler`; :meth:`run` draws the samples.

    Attributes:
        net: the prior's network calls (:class:`LatentNets`).
        space: acquisition <-> model grid map.
        dc_rule: data-consistency rule (operator, measurements, weight).
        init: pseudo-inverse image (X, Y, Z) on the acquisition grid, acquisition units (warm start).
        update: :class:`DDSUpdate` or :class:`DPSUpdate` (holding the same space and DC rule).
        cfg: the settings (steps, t_start, samples, label, final solve, seed, max_nfe).
        progress: show a progress bar over the steps.
        alignment: the :class:`ldp_med.align.Alignment` estimated for ``cfg.align`` (None without), also when it
            was rejected for centring (see :func:`make_sampler`).
    """

    net: LatentNets
    space: SpaceMap
    dc_rule: ImageDC
    init: torch.Tensor
    update: DDSUpdate | DPSUpdate
    cfg: PosteriorConfig = field(default_factory=PosteriorConfig)
    progress: bool = False
    meta: dict = field(default_factory=dict)
    alignment: object = None  # the placement estimate (``cfg.align``), used or rejected; handed to a restart pass

    @property
    def n_run(self) -> int:
        """Number of DDIM steps run from the warm start."""
        return run_length(self.cfg)

    @property
    def planned_nfe(self) -> int:
        """UNet evaluations per sample."""
        return self.n_run * self.net.evals_per_step

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> PosteriorResult:
        """Draw ``samples`` posterior samples; return their mean, std and the costs.

        Raises:
            ConfigError: the settings need more than ``max_nfe`` UNet evaluations per sample.
            LdpError: a network produced NaN/Inf (never returns NaN).
        """
        if self.planned_nfe > self.cfg.max_nfe:
            raise ConfigError(f"{self.planned_nfe} UNet evaluations per sample exceed the budget max_nfe={self.cfg.max_nfe} "
                              "(lower steps or t_start)")
        start = time.perf_counter()
        prior = self.net.prior
        device = next(prior.unet.parameters()).device
        sched = build_ddim_scheduler(prior.config.scheduler, self.cfg.steps)
        timesteps = [int(t) for t in sched.timesteps[self.cfg.steps - self.n_run :]]
        gen = torch.Generator(device=device).manual_seed(int(self.cfg.seed))
        label = null_class(prior) if self.cfg.label < 0 else int(self.cfg.label)
        b = int(self.cfg.samples)
        self.dc_rule.reset()
        init = self.init.to(device, torch.float32)[None]
        st = _State(sched, gen, torch.full((b,), label, device=device, dtype=torch.long), init,
                    keep_detail=bool(self.cfg.keep_detail))
        z0 = self.net.encode(st.set_fallback(init, self.space), st)
        z0 = z0.expand(b, *z0.shape[1:])
        noise = torch.randn(z0.shape, generator=gen, device=device)
        z = sched.add_noise(z0, noise, torch.full((b,), timesteps[0], device=device, dtype=torch.long))
        for i, t in enumerate(tqdm(timesteps, desc=self.update.name, disable=not self.progress)):
            z = self.update(self.net, st, i, t, z)
        if self.cfg.latent_fit_iters:
            z = fit_latents(self.net, self.space, self.dc_rule, z, st, self.cfg.latent_fit_iters,
                            self.cfg.latent_fit_lr, self.progress)
        with torch.no_grad():
            x = self.dc_rule.close(st.to_acq(self.space, self.net.decode(z, st)), self.cfg.final_cg_iters,
                                   self.cfg.final_dc)
            samples = x.cpu().numpy().astype(np.complex64 if x.is_complex() else np.float32)
            image = samples.mean(0) if x.is_complex() else None
            x = x.abs() if x.is_complex() else x
        if not torch.isfinite(x).all():
            raise LdpError("the reconstruction has NaN/Inf values")
        x = x.float().cpu()
        std = x.std(0, unbiased=True).numpy() if b > 1 else None
        return PosteriorResult(
            mean=x.mean(0).numpy().astype(np.float32), std=None if std is None else std.astype(np.float32),
            affine=np.asarray(self.meta.get("affine", np.eye(4)), np.float64), nfe=st.nfe, decodes=st.decodes,
            encodes=st.encodes, seconds=time.perf_counter() - start, method=self.update.name,
            lam=float(self.dc_rule.lam), noise_std=float(self.meta.get("noise_std", float("nan"))), image=image,
            meta={k: v for k, v in self.meta.items() if k not in ("affine", "noise_std")}, samples=samples,
            support=None if (sup := prior.support()) is None else self.space.mask_to_acq(sup),
            alignment=self.alignment,
        )


def fit_latents(net: LatentNets, space: SpaceMap, dc_rule: ImageDC, z: torch.Tensor, st: _State, iters: int,
                lr: float, progress: bool = False) -> torch.Tensor:
    """Each sample's latent moved toward the data through the decoder: ``iters`` Adam steps (learning rate ``lr``, in
    the UNet's latent units) on ``||A to_acq(D(z)) - y||^2 / scale^2``, in float32 (the decoder's backward pass in
    bfloat16 was slower on the CPU). The latent optimisation of ReSample (Song et al., ICLR 2024) at the end of
    sampling: the decoded image fits the data as far as the decoder can draw it, and the closing solve starts from
    there. Costs ``iters`` decodes and backward passes per sample (counted as decodes); ``progress``: a bar over
    them."""
    out, plain = [], replace(net, autocast="")  # LatentNets.decode, in float32
    bar = tqdm(total=len(z) * int(iters), desc="latent fit", disable=not progress)
    for b in range(len(z)):
        zb = z[b : b + 1].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([zb], lr=float(lr))
        for _ in range(int(iters)):
            with torch.enable_grad():
                x = dc_rule.complex_image(st.to_acq(space, plain.decode(zb, st, count=False), b), sample=b)
                loss = dc_rule.residual(x).abs().pow(2).sum() / space.scale**2
            zb.grad = torch.autograd.grad(loss, [zb])[0]  # the latent's gradient only, none left on the weights
            opt.step()
            bar.update()
        if not torch.isfinite(zb).all():
            raise LdpError("the latent fit to the data produced NaN/Inf")
        out.append(zb.detach())
    bar.close()
    st.decodes += int(iters)
    return torch.cat(out)


def dc_indices(n_run: int, dc_steps: int) -> list[int]:
    """Run-step indices of ``dc_steps`` DC corrections, evenly spread, first and last step excluded."""
    if dc_steps <= 0 or n_run < 2:
        return []
    idx = {min(n_run - 1, max(1, round(k * n_run / (dc_steps + 1)))) for k in range(1, dc_steps + 1)}
    return sorted(idx)


def _dds(cfg: PosteriorConfig, space: SpaceMap, rule: ImageDC) -> DDSUpdate:
    return DDSUpdate(dc_indices(run_length(cfg), cfg.dc_steps), space, rule, cfg.eta)


def _dps(cfg: PosteriorConfig, space: SpaceMap, rule: ImageDC) -> DPSUpdate:
    return DPSUpdate(cfg.dps_step, space, rule, cfg.eta)


#: Named samplers: thin constructors of the update rule (``prior`` is the CLI's name for the default).
UPDATES = {"dds": _dds, "prior": _dds, "dps": _dps}
assert tuple(UPDATES) == SAMPLERS


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX
    instructions (elsewhere oneDNN emulates bfloat16, slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = getattr(torch, "cpu", None)
    return device.type == "cpu" and any(bool(getattr(cpu, f, lambda: False)())
                                        for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def settle_autocast(setting: str, device: torch.device | str) -> str:
    """``PosteriorConfig.autocast`` for ``device``: ``"auto"`` is ``"bf16"`` where :func:`native_bf16`, else ``""``."""
    return ("bf16" if native_bf16(device) else "") if setting == "auto" else setting


def compressed(problem: Problem, coil_energy: float):
    """``(operator, y)`` of ``problem``, multi-coil k-space compressed to the fewest SVD virtual coils that hold
    ``coil_energy`` of the data's energy (:func:`ldp_med.physics.coils.compress_coils`) for speed."""
    maps = None if problem.kspace is None else problem.kspace.sensitivity_maps
    if coil_energy >= 1 or maps is None:
        return problem.operator, problem.y
    from ldp_med.physics.coils import compress_coils
    from ldp_med.physics.mri import MRIOperator

    kspace, maps = compress_coils(problem.kspace.kspace, maps, coil_energy)
    op = MRIOperator(problem.operator.mask, torch.from_numpy(np.ascontiguousarray(maps))[None])
    return op, torch.from_numpy(np.ascontiguousarray(kspace))[None]


def _dc_rule(problem: Problem, lam: float, cfg: PosteriorConfig) -> ImageDC:
    """The DC rule of ``problem`` (k-space compressed to ``cfg.coil_energy``)."""
    if not problem.is_complex:
        return ImageDC(problem.operator, problem.y, lam, cfg.cg_iters)
    op, y = compressed(problem, cfg.coil_energy)
    return KSpaceDC(op, y, lam, cfg.cg_iters, phase_sigma=cfg.phase_sigma)


def for_task(cfg: PosteriorConfig, task: str, factor: float = 1.0, regimes: tuple[str, ...] = ()) -> PosteriorConfig:
    """``cfg`` with its settings left to the task (None: ``t_start``, ``prior_error``, ``std_scale``, ...) taken from
    :data:`ldp_med.tasks.TASK_SETTINGS` at undersampling ``factor`` (``regimes``: the acquisition's first,
    :data:`ldp_med.tasks.REGIME_SETTINGS`)."""
    return with_task_settings(cfg, "posterior", task, factor, regimes)


def make_sampler(prior: Prior, problem: Problem, cfg: PosteriorConfig | None = None,
                 progress: bool = False, init: np.ndarray | None = None, alignment=None) -> PosteriorSampler:
    """Wire the posterior sampler that ``cfg.method`` names for ``problem``, whole.

    The :class:`SpaceMap` comes from the pseudo-inverse's geometry (:meth:`SpaceMap.for_volume`), the DC
    weight from the noise level and the intensity scale, the update rule from ``cfg``; the settings ``cfg``
    leaves to the task (None) are the task's (:func:`for_task`). The warm start is ``init`` (an image on the
    acquisition grid, e.g. an earlier reconstruction), else the pseudo-inverse. ``alignment``: an earlier
    run's :class:`ldp_med.align.Alignment` of the same problem, used instead of a new estimate when ``cfg.align``.
    An aligned placement whose model grid covers less than ``cfg.min_coverage`` of the anatomy (the pseudo-inverse's
    foreground, :meth:`SpaceMap.foreground_coverage`: a failed registration) is rejected for centring, said in
    ``meta["align_rejected"]``; the air around the anatomy may lie outside the grid (a 256 mm field of view).

    Raises:
        InputError: the model does not fit (channels, grid, or it covers too little of the anatomy).
        ConfigError: label out of range.
    """
    cfg = for_task(cfg or PosteriorConfig(), problem.task, problem.factor, problem.regimes(prior.config))
    check_prior(prior)
    if cfg.label >= len(prior.config.class_names):
        raise ConfigError(f"label {cfg.label} out of range: the model has classes {list(prior.config.class_names)}")
    space = SpaceMap.for_volume(problem.pinv, prior.config, align=cfg.align, transform=alignment if cfg.align else None)
    alignment, rejected = space.alignment, None
    covered = space.foreground_coverage(problem.pinv.data)
    if alignment is not None and covered < cfg.min_coverage:  # a registration that missed: centre
        rejected = {"align_rejected": f"the aligned placement left the model grid over {covered:.0%} of the "
                                      "anatomy; centred instead"}
        space = SpaceMap.for_volume(problem.pinv, prior.config)
        covered = space.foreground_coverage(problem.pinv.data)
    if covered < cfg.min_coverage:
        raise InputError(problem.source, f"the model grid ({'x'.join(map(str, prior.config.grid))} at "
                         f"{prior.config.voxel_mm} mm) covers only {covered:.0%} of the anatomy (the image's foreground)")
    if cfg.crop:
        space = space.cropped(prior.config.vae_factor * 2 ** (len(prior.config.unet.channels) - 1),
                              cfg.crop_margin * prior.config.vae_factor)
    rule = _dc_rule(problem, dc_weight(problem.noise_std, space.scale, cfg.prior_error, cfg.dc_lam), cfg)
    guided = cfg.label >= 0 and cfg.guidance != 1.0
    return PosteriorSampler(
        net=LatentNets(prior, cfg.guidance, 2 if guided else 1,
                       settle_autocast(cfg.autocast, next(prior.vae.parameters()).device)), space=space, dc_rule=rule,
        init=torch.from_numpy(np.ascontiguousarray(problem.pinv.data if init is None else init, np.float32)),
        update=UPDATES[cfg.method](cfg, space, rule),
        cfg=cfg, progress=progress,
        meta={**problem.meta, "task": problem.task, "affine": problem.affine, "noise_std": problem.noise_std,
              **(alignment.to_meta() if alignment is not None else {}), **(rejected or {})},
        alignment=alignment,
    )


def reconstruct(prior: Prior, problem: Problem, cfg: PosteriorConfig | None = None,
                progress: bool = False, init: np.ndarray | None = None, alignment=None) -> PosteriorResult:
    """``make_sampler(prior, problem, cfg, progress, init, alignment).run()``: the sampler ``cfg.method`` names."""
    return make_sampler(prior, problem, cfg, progress, init, alignment).run()
