"""The latent posterior sampler on a tiny untrained prior and a tiny odd-sized phantom.

The prior is untrained, so its estimates are as far from the data as the signal itself:
``prior_error=1.0`` tells the DC weight so (the honest setting for such a prior).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from monai.networks.nets import AutoencoderKL

from ldp_med.config import SimulateConfig, from_dict
from ldp_med.space import ToModelSpace
from ldp_med.errors import ConfigError, InputError, LdpError
from ldp_med.io.volume import Volume
from ldp_med.models.builders import build_ddim_scheduler, build_models
from ldp_med.models.pretrained import Prior
from ldp_med.physics.degradations import fine_affine
from ldp_med.physics.simulate import simulate_denoise, simulate_kspace, simulate_superres
from ldp_med.sampling.posterior import PosteriorConfig, _model_output, dc_indices, make_sampler, reconstruct
from ldp_med.problems import denoise_problem, kspace_problem, superres_problem
from ldp_med.space import SpaceMap
from tests.conftest import TINY_MODEL, ellipsoid_phantom, oblique_affine

FAST = PosteriorConfig(steps=8, t_start=0.5, dc_steps=2, prior_error=1.0, final_cg_iters=15)


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    return Prior(TINY_MODEL, vae.eval(), unet.eval())


@pytest.fixture(scope="module")
def phantom():
    return Volume(ellipsoid_phantom() * 100.0, np.diag([1.0, 1.1, 0.9, 1.0]), {"source": "phantom"})


@pytest.fixture(scope="module")
def ksp(phantom):
    return simulate_kspace(phantom, SimulateConfig(coils=3, calib=6, accel=3.0, noise=0.005, seed=1))


@pytest.fixture(scope="module")
def kproblem(ksp):
    return kspace_problem(ksp)


def residual(problem, x: np.ndarray) -> float:
    return float((problem.operator.A(torch.from_numpy(x)[None]) - problem.y).norm())


def test_kspace_output_is_finite_shaped_and_data_consistent(prior, kproblem, ksp):
    res = reconstruct(prior, kproblem, FAST)
    assert res.mean.shape == ksp.shape and res.mean.dtype == np.float32
    assert np.isfinite(res.mean).all() and (res.mean >= 0).all()
    np.testing.assert_allclose(res.affine, ksp.affine)
    assert res.std is None and res.image is not None and res.image.dtype == np.complex64
    zero_filled = kproblem.operator.A_adjoint(kproblem.y)[0].numpy()
    assert residual(kproblem, res.image) < residual(kproblem, zero_filled)
    assert kproblem.noise_source == "file" and res.noise_std == pytest.approx(0.005)
    assert res.volume().shape == ksp.shape and res.method == "dds"


def test_costs_are_counted_and_within_budget(prior, kproblem):
    res = reconstruct(prior, kproblem, FAST)
    assert res.nfe == 4 and res.decodes == FAST.dc_steps + 1 and res.encodes == FAST.dc_steps + 1
    assert res.seconds > 0
    default = make_sampler(prior, kproblem, PosteriorConfig())  # k-space's t_start 0.1: 5 of 50 steps
    assert default.planned_nfe <= 50 and default.n_run == 5
    guided = make_sampler(prior, kproblem, PosteriorConfig(t_start=1.0, label=1, guidance=3.0))
    with pytest.raises(ConfigError, match="budget"):
        guided.run()


def test_settings_left_to_the_task_come_from_the_task_at_its_factor_and_explicit_ones_stay(prior, kproblem, phantom,
                                                                                          monkeypatch):
    """``TASK_SETTINGS``: (factor, value) points, interpolated between and held past the ends; the sampler and the
    closing solve take them at the problem's undersampling factor (the mask's realised acceleration)."""
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.physics.masks import realised_acceleration
    from ldp_med.reconstruct import settle
    from ldp_med.sampling.posterior import for_task
    from ldp_med.tasks import TASK_SETTINGS, task_setting

    assert TASK_SETTINGS["kspace"]["posterior.t_start"] != TASK_SETTINGS["denoise"]["posterior.t_start"]
    (f0, v0), (f1, v1) = TASK_SETTINGS["kspace"]["closing.anchor"]
    assert task_setting("kspace", "closing.anchor", 1.0) == v0 and task_setting("kspace", "closing.anchor", 99) == v1
    assert task_setting("kspace", "closing.anchor", (f0 + f1) / 2) == pytest.approx((v0 + v1) / 2)
    assert task_setting("kspace", "posterior.keep_detail", 6.0) is True  # a switch stays a bool
    assert task_setting("denoise", "posterior.keep_detail") is False
    assert task_setting("kspace", "posterior.align", 4.0) is True and task_setting("kspace", "posterior.align", 8.0) is False
    # a name (a method) is not interpolated: the last point's at or below the factor, the first's below them all
    import ldp_med.tasks

    monkeypatch.setitem(ldp_med.tasks.TASK_SETTINGS["denoise"], "closing.classical", ((6.0, "bm4d"), (2.0, "nlm")))
    assert [task_setting("denoise", "closing.classical", f) for f in (1.0, 2.0, 5.9, 6.0, 9.0)] == ["nlm"] * 3 + ["bm4d"] * 2
    monkeypatch.undo()
    assert for_task(PosteriorConfig(align=False), "kspace", 4.0).align is False
    assert (for_task(PosteriorConfig(), "denoise").align, for_task(PosteriorConfig(), "superres").align) == (False, False)
    for task in TASK_SETTINGS:
        got = for_task(PosteriorConfig(), task)
        assert (got.t_start, got.prior_error) == tuple(task_setting(task, f"posterior.{k}") for k in ("t_start", "prior_error"))
    at8 = for_task(PosteriorConfig(), "kspace", 8.0)
    assert (at8.t_start, at8.std_scale) == (task_setting("kspace", "posterior.t_start", 8.0),
                                             task_setting("kspace", "posterior.std_scale", 8.0))
    assert at8.std_scale != for_task(PosteriorConfig(), "kspace", 4.0).std_scale
    mine = for_task(PosteriorConfig(t_start=0.7, prior_error=0.5), "kspace", 8.0)
    assert (mine.t_start, mine.prior_error) == (0.7, 0.5)
    factor = realised_acceleration(kproblem.kspace.mask)
    assert kproblem.factor == factor and denoise_problem(phantom, noise_std=0.02).factor == 1.0
    k, d = make_sampler(prior, kproblem), make_sampler(prior, denoise_problem(phantom, noise_std=0.02))
    assert (k.cfg.t_start, d.cfg.t_start) == (task_setting("kspace", "posterior.t_start", factor), 0.5)
    settled = settle(ReconstructConfig(), kproblem)
    assert settled.closing.anchor == task_setting("kspace", "closing.anchor", factor) and settled.posterior == k.cfg
    assert settle(ReconstructConfig(closing=ClosingConfig(anchor=0.7)), kproblem).closing.anchor == 0.7
    assert settled.closing.mu == settled.baseline.cs_lambda  # k-space's closing mu left None: CS's weight
    assert settle(ReconstructConfig(), denoise_problem(phantom, noise_std=0.02)).closing.mu is None  # image_mu's


def _regridded(problem, voxel_mm):
    """``problem`` with its acquisition voxels declared ``voxel_mm`` (the data unchanged): another regime's problem."""
    return dataclasses.replace(problem, pinv=Volume(problem.pinv.data, np.diag([*voxel_mm, 1.0]), dict(problem.pinv.meta)))


def test_a_coarse_acquisition_takes_its_own_settings_unless_asked(kproblem):
    from ldp_med.config import ReconstructConfig
    from ldp_med.reconstruct import settle
    from ldp_med.tasks import COARSE_VOXEL_MM3, REGIME_SETTINGS, task_setting

    assert kproblem.factor < 6 and kproblem.voxel_mm3 < COARSE_VOXEL_MM3 and kproblem.regimes(TINY_MODEL) == ()
    fine = settle(ReconstructConfig(), kproblem, TINY_MODEL).posterior
    assert fine.align is True and fine.steps == 50  # k-space up to R=4-6 aligns, 50 steps
    coarse = _regridded(kproblem, (4.0, 4.0, 5.0))  # an EPI b0's voxels
    assert coarse.regimes() == coarse.regimes(TINY_MODEL) == ("coarse",)
    settled = settle(ReconstructConfig(), coarse)
    got = settled.posterior
    assert got.align is False and got.steps == task_setting("kspace", "posterior.steps", 4.0, ("coarse",)) < 50
    for key in REGIME_SETTINGS["coarse"]["kspace"]:  # every one of them, whichever section it is in
        section, field = key.split(".")
        assert getattr(getattr(settled, section), field) == task_setting("kspace", key, coarse.factor, ("coarse",))
    # R=8: the latent fit through the 2 mm decoder is left out of a coarse acquisition only
    assert task_setting("kspace", "posterior.latent_fit_iters", 8.0) > 0
    assert task_setting("kspace", "posterior.latent_fit_iters", 8.0, ("coarse",)) == 0
    asked = ReconstructConfig(posterior=dataclasses.replace(ReconstructConfig().posterior, align=True, steps=50))
    assert (settle(asked, coarse).posterior.align, settle(asked, coarse).posterior.steps) == (True, 50)


def test_a_small_field_of_view_centres_in_kspace_and_denoises_with_bm4d(prior, ksp, kproblem, phantom, tmp_path):
    import json

    import nibabel as nib

    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.io.nifti import save_nifti
    from ldp_med.reconstruct import reconstruct as run, settle
    from ldp_med.tasks import SMALL_FOV_FRACTION, TASK_SETTINGS, acquisition_regimes

    assert acquisition_regimes(8.0, 0.99 * SMALL_FOV_FRACTION) == ("small",)
    assert acquisition_regimes(8.0, SMALL_FOV_FRACTION) == acquisition_regimes(8.0) == ()
    iters = TASK_SETTINGS["kspace"]["closing.iters"][0][1]
    # the phantom at 0.4 mm: 3% of the tiny model grid's field of view (at ~1 mm, half of it: not small)
    part = _regridded(kproblem, (0.4, 0.4, 0.4))
    assert part.regimes(TINY_MODEL) == ("small",) and part.regimes() == ()
    settled = settle(ReconstructConfig(), part, TINY_MODEL)
    assert (settled.posterior.align, settled.posterior.steps, settled.closing.iters) == (False, 20, 2)
    whole = settle(ReconstructConfig(), kproblem, TINY_MODEL)  # the whole phantom: k-space's own settings
    assert (whole.posterior.align, whole.posterior.steps, whole.closing.iters) == (True, 50, iters) and iters != 2
    assert make_sampler(prior, part).cfg.align is False  # the sampler made directly takes the regime too
    # a reconstruction says which regime's settings it took, and places the small part by centring
    vol = run(dataclasses.replace(ksp, affine=np.diag([0.4, 0.4, 0.4, 1.0])), "kspace",
              ReconstructConfig(method="prior", posterior=FAST), prior).volume
    assert vol.meta["regimes"] == ["small"] and vol.meta["closing_iters"] == 2 and "align_matrix" not in vol.meta
    save_nifti(vol, tmp_path / "part.nii.gz")  # the output file says so too (docs/formats.md)
    ext = nib.load(str(tmp_path / "part.nii.gz")).header.extensions
    assert json.loads(ext[0].get_content())["ldp_med"] == {"regimes": ["small"]}
    assert "regimes" not in run(ksp, "kspace", ReconstructConfig(method="prior", posterior=FAST), prior).volume.meta
    # coarse voxels over a small field of view (the shipped model's 2 mm grid): coarse's settings, small's for the rest
    shipped = dataclasses.replace(TINY_MODEL, grid=(96, 112, 96), voxel_mm=2.0)
    both = _regridded(kproblem, (3.0, 3.0, 3.0))
    assert both.regimes(shipped) == ("coarse", "small")
    settled = settle(ReconstructConfig(), both, shipped)
    assert (settled.posterior.latent_fit_iters, settled.closing.restarts, settled.closing.iters) == (0, 0, 2)
    # denoising a small part is blended with BM4D, not noise2self (whose net has few voxels to learn from there);
    # denoising's other settings stay, and a method the user names wins
    part = Volume(phantom.data, np.diag([0.4, 0.4, 0.4, 1.0]), {})
    den = denoise_problem(part, noise_std=0.02)
    assert den.regimes(TINY_MODEL) == ("small",)
    small = settle(ReconstructConfig(), den, TINY_MODEL).closing
    assert small.iters == TASK_SETTINGS["denoise"]["closing.iters"][0][1]
    assert (small.classical, settle(ReconstructConfig(), den).closing.classical) == ("bm4d", "noise2self")
    named = ReconstructConfig(closing=ClosingConfig(classical="nlm"))
    assert settle(named, den, TINY_MODEL).closing.classical == "nlm"
    vol = run(part, "denoise", ReconstructConfig(method="prior", posterior=FAST), prior).volume
    assert vol.meta["classical"] == "bm4d" and vol.meta["regimes"] == ["small"]
    whole = run(Volume(phantom.data, phantom.affine, {}), "denoise", ReconstructConfig(method="prior", posterior=FAST), prior)
    assert whole.volume.meta["classical"] == "noise2self" and "regimes" not in whole.volume.meta


def test_same_seed_same_output_different_seed_different(prior, kproblem):
    cfg = dataclasses.replace(FAST, dc_steps=1)
    a = reconstruct(prior, kproblem, cfg).mean
    b = reconstruct(prior, kproblem, cfg).mean
    c = reconstruct(prior, kproblem, dataclasses.replace(cfg, seed=7)).mean
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_samples_give_a_std_map(prior, kproblem):
    res = reconstruct(prior, kproblem, dataclasses.replace(FAST, samples=2))
    assert res.std is not None and res.std.shape == res.mean.shape
    assert np.isfinite(res.std).all() and (res.std >= 0).all() and res.std.max() > 0
    assert res.nfe == 4  # per sample: the batch shares each UNet call
    assert res.std_volume().shape == res.mean.shape


def test_dps_method(prior, kproblem):
    res = reconstruct(prior, kproblem, dataclasses.replace(FAST, samples=2, dps_step=0.5, method="dps"))
    assert res.method == "dps" and np.isfinite(res.mean).all() and res.std is not None
    assert res.nfe == 4 and res.decodes == 5 and res.encodes == 1


def test_espirit_and_single_coil(prior, phantom):
    ksp = simulate_kspace(phantom, SimulateConfig(coils=3, calib=6, accel=3.0, noise=0.005, seed=2))
    ksp.sensitivity_maps = None
    ksp.attrs["noise_std"] = None
    problem = kspace_problem(ksp)
    assert problem.noise_source == "estimated" and problem.noise_std > 0
    assert problem.operator.maps is not None  # ESPIRiT
    res = reconstruct(prior, problem, dataclasses.replace(FAST, dc_steps=1))
    assert np.isfinite(res.mean).all() and res.mean.shape == phantom.shape
    single = simulate_kspace(phantom, SimulateConfig(coils=1, calib=6, accel=2.0, noise=0.0, mask="random-lines", seed=3))
    res = reconstruct(prior, kspace_problem(single), dataclasses.replace(FAST, dc_steps=1))
    assert np.isfinite(res.mean).all()


def test_denoise_path(prior, phantom):
    noisy = simulate_denoise(phantom, SimulateConfig(task="denoise", noise=0.05, noise_kind="rician", seed=4))
    problem = denoise_problem(noisy)
    assert problem.noise_source == "estimated" and 2.0 < problem.noise_std < 8.0
    res = reconstruct(prior, problem, FAST)
    assert res.mean.shape == phantom.shape and np.isfinite(res.mean).all()
    np.testing.assert_allclose(res.affine, phantom.affine)


def test_superres_path_lives_on_the_fine_grid(prior, phantom):
    thick = simulate_superres(phantom, SimulateConfig(task="superres", factor=2, axis=2, noise=0.0))
    problem = superres_problem(thick, 2, 2, noise_std=0.0)
    res = reconstruct(prior, problem, FAST)
    assert res.mean.shape == (21, 24, 18) and np.isfinite(res.mean).all()
    np.testing.assert_allclose(res.affine, fine_affine(thick.affine, 2, 2))
    assert residual(problem, res.mean) < residual(problem, problem.pinv.data)
    with pytest.raises(InputError, match="factor"):
        superres_problem(thick, 1, 2)


def test_oblique_anisotropic_geometry_runs_when_the_grid_holds_the_anatomy_if_not_the_air_around_it(prior):
    """1.5 x 1.2 x 2 mm voxels: the field of view is larger than the tiny grid (48% of it inside), the phantom's
    anatomy is not (98%); twice those voxels leave 29% of the anatomy inside, refused in one line."""
    vol = Volume(ellipsoid_phantom() * 50.0, oblique_affine())
    problem = denoise_problem(vol, noise_std=1.0)
    space = make_sampler(prior, problem, FAST).space
    assert space.coverage_fraction < FAST.min_coverage <= space.foreground_coverage(vol.data)
    res = reconstruct(prior, problem, FAST)
    assert res.mean.shape == vol.shape and np.isfinite(res.mean).all()
    big = Volume(vol.data, oblique_affine() @ np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="covers only 29% of the anatomy"):
        make_sampler(prior, denoise_problem(big, noise_std=1.0), FAST)
    make_sampler(prior, denoise_problem(big, noise_std=1.0), dataclasses.replace(FAST, min_coverage=0.25))


def test_space_map_matches_the_monai_transform(monkeypatch):
    import ldp_med.space

    # the same geometry and intensity map; ToModelSpace's cubic spline swapped for SpaceMap's trilinear pull
    monkeypatch.setattr(ldp_med.space, "_SPLINE", dict(mode="bilinear", padding_mode="zeros"))
    vol = Volume(ellipsoid_phantom() * 200.0 + 5.0, oblique_affine())
    x, info = ToModelSpace.from_config(TINY_MODEL)(vol)
    space = SpaceMap.for_volume(vol, TINY_MODEL)  # MONAI's lazy geometry: no resampling
    model_affine, scale, offset = ToModelSpace.from_config(TINY_MODEL).geometry(vol)
    np.testing.assert_allclose(model_affine, info.model_affine, atol=1e-9)
    assert (scale, offset) == (info.scale, info.offset)
    m = space.to_model(torch.from_numpy(vol.data)[None])
    assert m.shape == (1, 1, *TINY_MODEL.grid)
    assert float((m[0] - x).abs().mean()) < 1e-3
    back = info.to_acquisition(x)
    ours = space.to_acq(x[None], fallback=torch.from_numpy(vol.data)[None])[0].numpy()
    inside = space.coverage.numpy() > 0.999
    assert 0.3 < space.coverage_fraction < 1 and inside.any()
    np.testing.assert_allclose(ours[inside], back[inside], atol=1e-2)


def test_model_that_does_not_fit(prior, kproblem):
    bad_grid = Prior(dataclasses.replace(TINY_MODEL, grid=(26, 32, 24)), prior.vae, prior.unet)
    with pytest.raises(InputError, match="divisible"):
        make_sampler(bad_grid, kproblem, FAST)
    cfg3 = dataclasses.replace(TINY_MODEL, vae=dataclasses.replace(TINY_MODEL.vae, latent_channels=3))
    with pytest.raises(InputError, match="channels"):
        make_sampler(Prior(cfg3, prior.vae, prior.unet), kproblem, FAST)
    with pytest.raises(InputError, match="UNet"):
        make_sampler(Prior(TINY_MODEL, prior.vae, None), kproblem, FAST)
    vae2 = AutoencoderKL(spatial_dims=3, in_channels=2, out_channels=2, channels=(4, 8, 8), latent_channels=2,
                         num_res_blocks=1, norm_num_groups=4, attention_levels=(False, False, False),
                         with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, include_fc=False)
    with pytest.raises(InputError, match="single-channel"):
        make_sampler(Prior(TINY_MODEL, vae2, prior.unet), kproblem, FAST)


def test_network_nan_is_an_error(prior, kproblem, monkeypatch):
    monkeypatch.setattr(prior.unet, "forward", lambda z, *a, **k: torch.full_like(z, float("nan")))
    with pytest.raises(LdpError, match="NaN"):
        reconstruct(prior, kproblem, FAST)


def test_config_is_plain_and_strict():
    cfg = from_dict(PosteriorConfig, {"steps": 20, "t_start": 0.4, "method": "dps", "final_dc": False})
    assert cfg.steps == 20 and cfg.method == "dps"
    with pytest.raises(ConfigError):
        from_dict(PosteriorConfig, {"stepz": 3})
    with pytest.raises(ConfigError):
        PosteriorConfig(method="magic")
    with pytest.raises(ConfigError, match="t_start"):
        PosteriorConfig(t_start=0.0)


def test_dc_indices_are_spread_inside_the_run():
    assert dc_indices(25, 4) == [5, 10, 15, 20]
    assert dc_indices(4, 10) == [1, 2, 3]
    assert dc_indices(10, 0) == [] and dc_indices(1, 3) == []


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_corrected_step_uses_the_corrected_estimate(kind):
    sched = build_ddim_scheduler(dataclasses.replace(TINY_MODEL.scheduler, prediction_type=kind), 10)
    z0, eps = torch.randn(2, 2, 3, 4, 3), torch.randn(2, 2, 3, 4, 3)
    t = int(sched.timesteps[3])
    tt = torch.full((2,), t)
    zt = sched.add_noise(z0, eps, tt)
    _, got = sched.step(_model_output(sched, z0, eps, tt), t, zt)
    torch.testing.assert_close(got, z0, atol=1e-4, rtol=1e-4)


def test_one_dispatch_every_method_reads_the_same_problem(prior, ksp):
    """reconstruct() builds the problem once per call; zero-filled is its pseudo-inverse, the prior records its cost."""
    from ldp_med.config import ReconstructConfig
    from ldp_med.reconstruct import SOLVERS, reconstruct as run
    from ldp_med.tasks import METHODS

    assert set(SOLVERS) == {(t, m) for t, ms in METHODS.items() for m in ms}
    zf = run(ksp, "kspace", ReconstructConfig(method="zero-filled"))
    np.testing.assert_array_equal(zf.volume.data, zf.problem.pinv.data)
    assert zf.problem.kspace.sensitivity_maps is not None and zf.problem.source is None
    rec = run(ksp, "kspace", ReconstructConfig(method="prior", posterior=FAST), prior, source="scan.h5")
    assert rec.volume.meta["nfe"] == 4 and rec.volume.meta["sampler"] == "dds" and rec.problem.source == "scan.h5"
    dps = run(ksp, "kspace", ReconstructConfig(method="prior", posterior=dataclasses.replace(FAST, method="dps")), prior)
    assert dps.volume.meta["sampler"] == "dps"  # posterior.method is read: "prior" runs the configured sampler
    with pytest.raises(InputError, match="does not apply"):
        run(ksp, "kspace", ReconstructConfig(method="nlm"))


def test_closing_anchors_kspace_on_the_support_and_image_tasks_everywhere(kproblem, phantom, monkeypatch):
    """The shipped defaults: k-space anchors only where the model knows anatomy, denoise / superres everywhere;
    each task's flag switches its own anchor."""
    import ldp_med.sampling.closing as closing
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import AIR_PROBE, _close
    from ldp_med.tasks import task_setting

    # the anchored solves; the iterations of k-space's anchor-free agreement solve (lam 0) and of its air probe
    seen, free_iters, probes = [], [], []
    monkeypatch.setattr(closing, "closing_solve", lambda problem, samples, lam, mu, iters, weights=None, **kw:
                        (probes.append(iters) if kw.get("perturb") is not None else
                         seen.append((lam, weights, mu)) if lam else free_iters.append(iters)) or samples)
    support = np.full(phantom.shape, 0.5, np.float32)
    dproblem = denoise_problem(phantom, noise_std=1.0)
    cfg = ReconstructConfig()
    _close(kproblem, np.ones((1, *kproblem.shape), np.complex64), cfg, support)
    _close(dproblem, np.zeros((1, *phantom.shape), np.float32), cfg, support)
    (k_lam, k_w, k_mu), (d_lam, d_w, d_mu) = seen
    assert d_w is None and d_lam == cfg.closing.image_anchor and d_mu == cfg.closing.image_mu * dproblem.noise_std
    np.testing.assert_allclose(k_w, support)  # the samples agree with the data's own solve everywhere: weight 1
    assert k_lam == task_setting("kspace", "closing.anchor", kproblem.factor)  # left to the task (None)
    assert k_mu == cfg.baseline.cs_lambda  # closing.mu None: the CS baseline's weight
    assert free_iters == [cfg.closing.agreement_iters]
    assert probes == ([AIR_PROBE[0]] if task_setting("kspace", "closing.air", kproblem.factor) else [])
    _close(kproblem, np.ones((1, *kproblem.shape), np.complex64), ReconstructConfig(closing=ClosingConfig(agreement_iters=3)),
           support)
    assert free_iters[-1] == 3 and seen.pop()[0] == k_lam
    _close(kproblem, np.ones((1, *kproblem.shape), np.complex64), ReconstructConfig(closing=ClosingConfig(mu=0.007)), support)
    assert seen.pop()[2] == 0.007
    flipped = ReconstructConfig(closing=ClosingConfig(anchor_support=False, image_anchor_support=True))
    _close(kproblem, np.ones((1, *kproblem.shape), np.complex64), flipped, support)
    _close(dproblem, np.zeros((1, *phantom.shape), np.float32), flipped, support)
    np.testing.assert_allclose(seen[2][1], 1.0)
    assert seen[3][1] is support


def test_closing_can_start_from_the_agreement_solve_and_keep_restart_passes_plain(kproblem, phantom, monkeypatch):
    """``closing.from_free``: the anchored solve starts from the agreement's anchor-free solve (not the sample);
    ``closing.restart_iters``: a pass that only warm-starts the next one runs the anchored solve alone, that long."""
    import ldp_med.sampling.closing as closing
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import _close, _restart_config

    calls = []  # (lam, iters, weights, starts) of every solve; the anchor-free one returns its own marker

    def fake(problem, samples, lam, mu, iters, weights=None, starts=None, **kw):
        calls.append((lam, iters, weights, starts))
        return samples if lam else np.full_like(samples, 3.0)

    monkeypatch.setattr(closing, "closing_solve", fake)
    samples = np.ones((1, *kproblem.shape), np.complex64)
    support = np.ones(phantom.shape, np.float32)
    off = ReconstructConfig(closing=ClosingConfig(from_free=False, iters=30, restart_iters=None, air=0.0))
    _close(kproblem, samples, _restart_config(off), support)  # both off: both solves in every pass, from the sample
    assert [(c[0] > 0, c[1], c[3] is None) for c in calls] == [(False, 30, True), (True, 30, True)]
    calls.clear()
    cfg = ReconstructConfig(closing=ClosingConfig(restart_iters=5, air=0.0))  # k-space's 10 iterations from the free solve
    _close(kproblem, samples, cfg, support)
    (_, free_iters, _, free_starts), (lam, iters, _, starts) = calls
    assert free_iters == 30 and free_starts is None and iters == 10 and np.all(starts == 3.0)
    calls.clear()
    _close(kproblem, samples, _restart_config(cfg), support)
    ((lam, iters, weights, starts),) = calls  # no agreement solve: the support alone weighs the anchor
    assert lam > 0 and iters == 5 and starts is None and weights is support


def test_closing_blends_the_image_tasks_result_with_the_classical_estimate_where_they_disagree(phantom, monkeypatch):
    """``closing.image_agreement``: a closed sample far from the input (a brain prior on a head) is replaced by the
    task's classical estimate (``closing.classical``'s); 0 passes the closed sample through."""
    import ldp_med.sampling.closing as closing
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import SOLVERS, _close
    from ldp_med.tasks import task_setting

    monkeypatch.setattr(closing, "closing_solve", lambda problem, samples, *a, **kw: samples)
    rng = np.random.default_rng(0)
    noisy = Volume(phantom.data + rng.normal(0, 1.0, phantom.shape).astype(np.float32), phantom.affine)
    problem = denoise_problem(noisy, noise_std=1.0)  # the tolerance is 4% of ~100
    wrong = np.full((1, *phantom.shape), 300.0, np.float32)
    cfg = ReconstructConfig(closing=ClosingConfig(air=0))  # the blend alone (the air step has tests of its own)
    blended, spread = _close(problem, wrong, cfg, None)
    assert spread is None  # no perturbed solves unless asked for
    classical = SOLVERS["denoise", task_setting("denoise", "closing.classical")](problem, cfg, None, False)[0]
    np.testing.assert_allclose(blended[0], classical, atol=1e-4)
    assert _close(problem, wrong, ReconstructConfig(closing=ClosingConfig(image_agreement=0, air=0)), None)[0] is wrong


def test_std_map_pools_the_variance_and_takes_the_tasks_calibrated_scale(kproblem, phantom, monkeypatch):
    """``pooled_std``: the square root of a variance map pooled over a Gaussian neighbourhood (the pooled estimate
    of a constant spread is that spread, and less noisy); ``std_scale``: the config's, else the task's."""
    from ldp_med.config import PosteriorConfig, ReconstructConfig
    from ldp_med.reconstruct import pooled_std, settle
    from ldp_med.tasks import TASK_SETTINGS

    def std_scale(problem, post):
        return settle(ReconstructConfig(posterior=post), problem).posterior.std_scale

    var = np.random.default_rng(0).normal(0, 2.0, (8, 15, 13, 11)).var(0, ddof=1)
    raw, pooled = pooled_std(var, 0), pooled_std(var, 1.5)
    np.testing.assert_allclose(raw, np.sqrt(var), rtol=1e-5)
    assert np.median(pooled) == pytest.approx(2.0, rel=0.05) and pooled.std() < 0.5 * raw.std()
    import ldp_med.tasks

    dproblem = denoise_problem(phantom, noise_std=1.0)
    assert std_scale(dproblem, PosteriorConfig()) == TASK_SETTINGS["denoise"]["posterior.std_scale"][0][1]
    assert std_scale(dproblem, PosteriorConfig(std_scale=2.5)) == 2.5
    # k-space: interpolated at the mask's undersampling factor, held constant past the calibrated ones
    factor = kproblem.kspace.mask.size / kproblem.kspace.mask.sum()
    for points, want in ((((factor - 1, 1.0), (factor + 1, 3.0)), 2.0), (((factor + 1, 5.0), (factor + 2, 6.0)), 5.0)):
        monkeypatch.setitem(ldp_med.tasks.TASK_SETTINGS["kspace"], "posterior.std_scale", points)
        assert std_scale(kproblem, PosteriorConfig()) == pytest.approx(want)


def test_a_warm_start_from_the_classical_estimate_adds_its_change_to_the_variance(phantom, monkeypatch):
    """Samples started from the classical estimate inherit its error, which their spread cannot show: the variance
    gets the estimate's squared change to the pseudo-inverse (here without the blend, so nothing else adds)."""
    import ldp_med.sampling.closing as closing
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import _close

    monkeypatch.setattr(closing, "closing_solve", lambda problem, samples, *a, perturb=None, **kw: samples)
    problem = denoise_problem(phantom, noise_std=1.0)
    cfg = ReconstructConfig(closing=ClosingConfig(air=0, image_agreement=0))
    rng = np.random.default_rng(0)
    samples = rng.uniform(1, 2, size=(3, *phantom.shape)).astype(np.float32)  # positive: the spread is of |x|
    classical = (problem.pinv.data + rng.normal(size=phantom.shape)).astype(np.float32)
    _, plain = _close(problem, samples, cfg, None, spread=True)
    _, var = _close(problem, samples, cfg, None, spread=True, classical=classical)
    np.testing.assert_allclose(plain, samples.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(var, plain + (classical - problem.pinv.data) ** 2, rtol=1e-5)


def test_image_task_variance_adds_the_blends_mixture_term(phantom, monkeypatch):
    """The blend's variance is the mixture's, ``w v_x + (1 - w) v_c + w (1 - w) (x - c)^2`` averaged over samples:
    ``v_x`` the perturbed solves' spread, ``v_c`` the classical estimate's own error variance where its method gives
    one (noise2self), noise2self's for another denoiser (NLM) and ``v_x`` for super-resolution's selfsim: then only
    the disagreement term adds to the spread."""
    import ldp_med.sampling.closing as closing
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import _close, classical_estimate

    monkeypatch.setattr(closing, "closing_solve", lambda problem, samples, *a, perturb=None, **kw: samples)
    problem = denoise_problem(phantom, noise_std=1.0)
    own_n2s = None
    for method in ("noise2self", "nlm", "selfsim"):  # the blend alone (no air gain)
        cfg = ReconstructConfig(closing=ClosingConfig(air=0, image_agreement=0.04, classical=method))
        if method == "selfsim":
            problem = superres_problem(phantom, 2, 2, noise_std=1.0)
        c, own = classical_estimate(problem, cfg, variance=True)
        assert classical_estimate(problem, cfg)[1] is None  # only asked for
        if method == "noise2self":
            own_n2s = own
        elif method == "nlm":  # noise2self's variance of the same input stands in for NLM's
            np.testing.assert_array_equal(own, own_n2s)
        assert (own is None) == (method == "selfsim")
        tol = cfg.closing.image_agreement * float(np.percentile(c, 99))
        offsets = np.array([0.0, tol, 30 * tol], np.float32)[:, None, None, None]  # agree, half-way, disagree
        samples = (np.abs(c)[None] + offsets).astype(np.float32)
        blended, var = _close(problem, samples, cfg, None, spread=True)
        w = closing.agreement_weights(samples, c, tol)  # exp(-offset^2 / (2 tol^2)) where c >= 0
        spread = samples.var(0, ddof=1)  # the stubbed solves return the samples themselves
        v_c = spread if own is None else own
        want = np.mean(w * spread + (1 - w) * v_c + w * (1 - w) * (samples - c) ** 2, 0)
        np.testing.assert_allclose(var, want, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(blended[2], c, atol=1e-3)


def test_a_restart_warm_starts_the_sampler_from_the_closed_image_of_the_pass_before(prior, kproblem, monkeypatch):
    """``closing.restarts``: pass 1 starts from the pseudo-inverse, every later pass from the magnitude of the previous
    pass's closed image; the UNet evaluations add up, the std map and the latent fit are the last pass's."""
    import ldp_med.sampling.posterior as posterior
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import SOLVERS

    inits, fits, real = [], [], posterior.reconstruct
    monkeypatch.setattr(posterior, "reconstruct", lambda *a, init=None, **kw: inits.append(init) or real(*a, init=init, **kw))
    monkeypatch.setattr(posterior, "fit_latents", lambda net, space, rule, z, *a: fits.append(len(inits)) or z)
    solve = SOLVERS["kspace", "prior"]
    closing = ClosingConfig(iters=5, restarts=0, restart_iters=None)
    cfg = ReconstructConfig(posterior=dataclasses.replace(FAST, samples=2, latent_fit_iters=1), closing=closing)
    once, std_once, meta_once = solve(kproblem, cfg, prior, False)
    assert inits == [None]
    inits.clear()
    again = dataclasses.replace(cfg, closing=dataclasses.replace(closing, restarts=1))
    twice, std_twice, meta_twice = solve(kproblem, again, prior, False)
    assert inits[0] is None and inits[1] is not None and meta_twice["nfe"] == 2 * meta_once["nfe"]
    assert fits == [1, 2]  # the latent fit: in the single pass, then only in the last of two
    np.testing.assert_array_equal(inits[1], once)  # same seed: pass 1 is the single pass's result
    assert not np.allclose(twice, once) and std_twice is not None and std_twice.shape == twice.shape


def test_an_aligned_placement_is_estimated_once_for_every_pass_and_centred_when_it_misses(prior, kproblem, monkeypatch):
    """``posterior.align`` with ``closing.restarts``: every pass aligns the same pseudo-inverse, so the placement is
    estimated in the first pass and handed to the next; the output's metadata is that estimate's. A placement that
    leaves the model grid off the field of view (below ``min_coverage``) runs centred, as ``align=False`` does."""
    import ldp_med.align as align
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import SOLVERS

    from ldp_med.space import model_grid_affine

    calls, pinv = [], kproblem.pinv
    model = model_grid_affine(prior.config.grid, prior.config.voxel_mm, prior.config.affine)
    centre = lambda aff, shape: aff[:3, :3] @ ((np.asarray(shape) - 1) / 2) + aff[:3, 3]
    m = np.eye(4)
    m[:3, 3] = centre(model, prior.config.grid) - centre(pinv.affine, pinv.shape)  # the centring, as an estimate

    def fake(volume, cfg=None, reference=None):
        calls.append(volume.shape)
        return align.Alignment(matrix=m, metric=0.5, seconds=0.25, cpu_seconds=0.25, stages=("rigid",))

    monkeypatch.setattr(align, "estimate_alignment", fake)
    cfg = ReconstructConfig(posterior=dataclasses.replace(FAST, align=True),
                            closing=ClosingConfig(iters=3, restarts=2, restart_iters=None))
    _, _, meta = SOLVERS["kspace", "prior"](kproblem, cfg, prior, False)
    assert calls == [kproblem.pinv.shape] and meta["align_seconds"] == 0.25 and meta["align_stages"] == ["rigid"]
    assert "align_rejected" not in meta
    # an estimate that moves the model grid off the field of view is rejected for centring, once for every pass
    calls.clear()
    m[:3, 3] += 1000.0
    image, _, meta = SOLVERS["kspace", "prior"](kproblem, cfg, prior, False)
    assert calls == [kproblem.pinv.shape] and "centred instead" in meta["align_rejected"]
    centred = dataclasses.replace(cfg, posterior=dataclasses.replace(cfg.posterior, align=False))
    np.testing.assert_allclose(image, SOLVERS["kspace", "prior"](kproblem, centred, prior, False)[0], rtol=0, atol=1e-6)


def test_kspace_anchor_is_lowered_where_the_sample_disagrees_with_the_datas_own_solve(kproblem, monkeypatch):
    """``closing.agreement``: one anchor-free solve per sample (the CS objective from it), then the anchored solve
    with the anchor weighted by their agreement: ~0 where they differ by many tolerances, 1 where they agree."""
    import ldp_med.sampling.closing as closing
    from ldp_med.config import ClosingConfig, ReconstructConfig
    from ldp_med.reconstruct import _close

    calls = []

    def fake(problem, samples, lam, mu, iters, weights=None, **kw):
        calls.append((lam, weights))
        out = samples.copy()
        if lam == 0:  # the data's own solve: it disagrees with the samples in one corner
            out[:, :3, :3, :3] += 100
        return out

    monkeypatch.setattr(closing, "closing_solve", fake)
    samples = np.full((2, *kproblem.shape), 10, np.complex64)
    support = np.ones(kproblem.shape, np.float32)
    _close(kproblem, samples, ReconstructConfig(closing=ClosingConfig(agreement=0.05, air=0.0)), support)
    (lam0, _), (lam, w) = calls
    assert lam0 == 0 and lam > 0 and w.shape == kproblem.shape
    assert w[0, 0, 0] < 0.01 and w[-1, -1, -1] == pytest.approx(1.0)
    calls.clear()
    _close(kproblem, samples, ReconstructConfig(closing=ClosingConfig(agreement=0, air=0.0)), support)
    assert len(calls) == 1 and calls[0][1] is support


def test_crop_runs_the_networks_on_the_box_that_holds_the_field_of_view(prior, kproblem, monkeypatch):
    seen = []
    encode = prior.vae.encode
    monkeypatch.setattr(prior.vae, "encode", lambda x: seen.append(tuple(x.shape[2:])) or encode(x))
    # on the tiny grid the phantom's box is the whole grid: crop changes nothing
    whole = reconstruct(prior, kproblem, FAST)
    same = reconstruct(prior, kproblem, dataclasses.replace(FAST, crop=True))
    np.testing.assert_array_equal(same.mean, whole.mean)
    assert set(seen) == {TINY_MODEL.grid}
    # a 48^3 grid around the same field of view (21 x 26.4 x 17.1 mm, 1 voxel of margin = 4 mm, corners on the
    # 8-voxel lattice): the networks see a 32 x 48 x 32 box of it
    big = Prior(dataclasses.replace(TINY_MODEL, grid=(48, 48, 48)), prior.vae, prior.unet)
    seen.clear()
    res = reconstruct(big, kproblem, dataclasses.replace(FAST, crop=True, crop_margin=1))
    assert set(seen) == {(32, 48, 32)} and res.mean.shape == kproblem.pinv.shape and np.isfinite(res.mean).all()
    zero_filled = kproblem.operator.A_adjoint(kproblem.y)[0].numpy()
    assert residual(kproblem, res.image) < residual(kproblem, zero_filled)


def test_bf16_autocast_runs_the_networks_in_bfloat16_and_stays_close(prior, kproblem, monkeypatch):
    dtypes = []
    decode = prior.vae.decode
    monkeypatch.setattr(prior.vae, "decode", lambda z: dtypes.append(torch.get_autocast_dtype("cpu")
                                                                     if torch.is_autocast_enabled("cpu") else None)
                        or decode(z))
    ref = reconstruct(prior, kproblem, dataclasses.replace(FAST, autocast=""))
    res = reconstruct(prior, kproblem, dataclasses.replace(FAST, autocast="bf16"))
    assert dtypes == [None] * ref.decodes + [torch.bfloat16] * res.decodes
    assert res.mean.dtype == np.float32 and np.isfinite(res.mean).all()
    diff = np.abs(res.mean - ref.mean).mean() / np.abs(ref.mean).mean()
    assert 0 < diff < 0.04, diff  # bf16 keeps 8 bits of mantissa: 0.022 on a CPU without native bf16 (avx512f only)


def test_auto_autocast_is_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    from ldp_med.sampling import posterior

    assert posterior.settle_autocast("", "cpu") == "" and posterior.settle_autocast("bf16", "cpu") == "bf16"
    for native, want in ((True, "bf16"), (False, "")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert posterior.settle_autocast("auto", "cpu") == want
    with pytest.raises(ConfigError, match="autocast"):
        from_dict(PosteriorConfig, {"autocast": "fp16"})


def test_the_latent_fit_moves_the_decoded_image_toward_the_data(prior, kproblem):
    raw = dataclasses.replace(FAST, final_dc=False, autocast="")  # the decoded image itself, no DC solve after it
    before = reconstruct(prior, kproblem, raw)
    after = reconstruct(prior, kproblem, dataclasses.replace(raw, latent_fit_iters=5, latent_fit_lr=0.5))
    assert after.decodes == before.decodes + 5 and np.isfinite(after.mean).all()
    assert residual(kproblem, after.image) < 0.9 * residual(kproblem, before.image)


def test_kspace_aligns_by_default_at_r4_and_centres_at_r8(prior, phantom, kproblem, monkeypatch):
    """``posterior.align`` left None is the task's: k-space at R=3-4 estimates a placement (its metadata says so),
    at R=8 it centres, and ``align=False`` centres at any factor."""
    import ldp_med.align as align

    calls = []
    real = align.estimate_alignment
    monkeypatch.setattr(align, "estimate_alignment", lambda volume, cfg=None, reference=None: calls.append(1) or real(
        volume, align.AlignConfig(work_mm=4.0, search_mm=0, iterations=5)))
    r8 = kspace_problem(simulate_kspace(phantom, SimulateConfig(coils=3, calib=6, accel=8.0, noise=0.005, seed=1)))
    assert kproblem.factor < 6 < r8.factor
    assert "align_matrix" in make_sampler(prior, kproblem, FAST).meta and calls == [1]
    assert "align_matrix" not in make_sampler(prior, r8, FAST).meta and calls == [1]
    assert "align_matrix" not in make_sampler(prior, kproblem, dataclasses.replace(FAST, align=False)).meta
    assert calls == [1]


def test_a_finer_acquisition_grid_gets_its_voxel_share_of_the_kspace_anchor(prior, phantom, monkeypatch):
    """k-space's closing anchor weighs the prior's belief per model voxel: on an acquisition grid of half the model's
    voxel size every voxel gets 1/8 of the anchor; at the model's voxel size (and coarser) the whole of it."""
    import ldp_med.reconstruct as R
    from ldp_med.config import ReconstructConfig
    from ldp_med.tasks import task_setting

    seen = []
    monkeypatch.setattr(R, "_close", lambda problem, samples, cfg, support, spread=False, classical=None, progress=False: (
        seen.append((cfg.closing.anchor, problem.factor)) or samples, None))
    cfg = ReconstructConfig(posterior=dataclasses.replace(FAST, align=False))
    for mm in (0.5, 1.0):  # the tiny model's voxel is 1 mm
        vol = Volume(phantom.data, np.diag([mm, mm, mm, 1.0]), {"source": "phantom"})
        ksp = simulate_kspace(vol, SimulateConfig(coils=3, calib=6, accel=3.0, noise=0.005, seed=1))
        R.SOLVERS["kspace", "prior"](kspace_problem(ksp), cfg, prior, False)
    assert [a for a, _ in seen] == pytest.approx([task_setting("kspace", "closing.anchor", f) * s
                                                  for (_, f), s in zip(seen, (0.125, 1.0))])
