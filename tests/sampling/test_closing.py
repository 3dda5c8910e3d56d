"""The closing solve: CS when the anchor has no weight, the anchor's data-consistent image when it dominates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldp_med.baselines import cs_l1_wavelet
from ldp_med.config import SimulateConfig
from ldp_med.io.volume import Volume
from ldp_med.physics.simulate import simulate_kspace
from ldp_med.problems import denoise_problem, kspace_problem
from ldp_med.sampling.closing import agreement_blend, closing_solve
from tests.conftest import ellipsoid_phantom

pytest.importorskip("sigpy")


@pytest.fixture(scope="module")
def problem():
    vol = Volume(ellipsoid_phantom((12, 16, 14)), np.eye(4))
    ksp = simulate_kspace(vol, SimulateConfig(coils=3, calib=6, accel=3.0, noise=0.01, seed=3))
    return kspace_problem(ksp)


def test_without_anchor_weight_it_is_the_cs_baseline(problem):
    k = problem.kspace
    cs = cs_l1_wavelet(k.kspace, k.mask, k.sensitivity_maps, 0.002, 400)
    anchor = np.zeros((1, *problem.shape), np.complex64)
    ours = closing_solve(problem, anchor, lam=0.0, mu=0.002, iters=400)[0]
    assert np.abs(ours - cs).max() < 1e-3 * np.abs(cs).max()


def test_a_dominant_perfect_anchor_is_returned_data_consistent(problem):
    """Noise-free data of a complex truth: with the truth as anchor and lam >> mu the solve keeps it."""
    rng = np.random.default_rng(2)
    truth = (problem.kspace.reference * np.exp(1j * rng.uniform(0, 0.3))).astype(np.complex64)
    y = problem.operator.A(torch.from_numpy(truth)[None])
    out = closing_solve(problem, truth[None], lam=100.0, mu=0.002, iters=30, y=y)[0]
    assert np.linalg.norm(out - truth) < 1e-3 * np.linalg.norm(truth)
    # a wrong anchor at a small weight: the data pull the result back toward the truth
    wrong = truth * 0.8
    out = closing_solve(problem, wrong[None], lam=0.01, mu=0.002, iters=60, y=y)[0]
    resid = problem.operator.A(torch.from_numpy(out)[None]) - y
    assert float(resid.abs().norm() / y.abs().norm()) < 0.05  # the anchor's own residual is 0.2
    assert np.linalg.norm(out - truth) < 0.5 * np.linalg.norm(wrong - truth)


def test_zero_anchor_weights_leave_the_cs_objective(problem):
    """Where ``weights`` is 0 (outside the prior's support) the anchor has little say, whatever lam is."""
    anchor = np.full((1, *problem.shape), 2.0, np.complex64)  # far off everywhere (the image peaks near 1)
    free = closing_solve(problem, anchor, lam=0.0, mu=0.002, iters=100)[0]
    w = np.zeros(problem.shape, np.float32)
    w[:6] = 1.0
    out = closing_solve(problem, anchor, lam=10.0, mu=0.002, iters=100, weights=w)[0]
    scale = np.abs(free).max()
    assert np.abs(out[:6] - 2.0).max() < 0.3 * scale  # anchored half: held near the anchor
    assert np.abs(out[8:] - free[8:]).max() < 0.2 * scale  # two rows away: the CS solution's (coupled by aliasing)


def test_a_warm_start_moves_the_path_not_the_fixed_point(problem):
    """``starts``: the iterations begin there (0 iterations return them), and the solve still heads for the same
    anchored solution (the objective is strictly convex)."""
    anchor = np.zeros((1, *problem.shape), np.complex64)
    start = np.full((1, *problem.shape), 0.5, np.complex64)
    np.testing.assert_array_equal(closing_solve(problem, anchor, 0.1, 0.002, 0, starts=start), start)
    from_anchor = closing_solve(problem, anchor, 0.1, 0.002, 200)[0]
    from_start = closing_solve(problem, anchor, 0.1, 0.002, 200, starts=start)[0]
    early = closing_solve(problem, anchor, 0.1, 0.002, 3, starts=start)[0]
    scale = np.abs(from_anchor).max()
    assert np.abs(from_start - from_anchor).max() < 1e-3 * scale < np.abs(early - from_anchor).max()


def test_real_problems_close_too():
    rng = np.random.default_rng(1)
    clean = ellipsoid_phantom((12, 16, 14))
    noisy = clean + 0.05 * rng.normal(size=clean.shape).astype(np.float32)
    problem = denoise_problem(Volume(noisy, np.eye(4)), noise_std=0.05)
    out = closing_solve(problem, clean[None], lam=1.0, mu=0.02, iters=20, weights=np.full(clean.shape, 0.5))
    assert out.dtype == np.float32 and np.abs(out[0] - clean).mean() < np.abs(noisy - clean).mean()


def test_denoising_closes_in_one_step_the_closed_form_minimiser(monkeypatch):
    """``A = I`` with one anchor weight: the gradient step lands on ``(y + lam x_bar) / (1 + lam)`` from anywhere, so
    the solve is one prox of that point (the wavelet soft-threshold at ``mu / (1 + lam)``), whatever ``iters`` says;
    per-voxel weights still iterate."""
    import sigpy as sp

    from ldp_med.sampling.closing import _l1_reg

    rng = np.random.default_rng(4)
    clean = ellipsoid_phantom((13, 17, 11))
    noisy = (clean + 0.05 * rng.normal(size=clean.shape)).astype(np.float32)
    problem = denoise_problem(Volume(noisy, np.eye(4)), noise_std=0.05)
    anchor = (clean + 0.02 * rng.normal(size=clean.shape)).astype(np.float32)[None]
    updates = []
    update = sp.alg.GradientMethod.update
    monkeypatch.setattr(sp.alg.GradientMethod, "update", lambda self: (updates.append(1), update(self))[1])
    out = closing_solve(problem, anchor, lam=3.0, mu=0.02, iters=30)[0]
    assert len(updates) == 1
    W = sp.linop.Wavelet(clean.shape, wave_name="db4")
    z = (noisy + 3.0 * anchor[0]) / 4.0
    closed_form = np.real(sp.prox.UnitaryTransform(_l1_reg(sp, W.oshape, 0.02), W)(0.25, z))
    np.testing.assert_allclose(out, closed_form, atol=1e-6)
    closing_solve(problem, anchor, lam=3.0, mu=0.02, iters=30, weights=np.full(clean.shape, 0.5))
    assert len(updates) == 31


def test_cycle_spinning_removes_the_dyadic_grid_and_is_seeded():
    """``spin``: the wavelet prox at random offsets. On the CS objective (no anchor) of an undersampled phantom, the
    spun solve is nearer the truth than the decimated one (the phantom's edges fall anywhere on the wavelet's dyadic
    grid); equal seeds give equal results, another seed another path, and ``spin`` 1 is the unspun solve."""
    vol = Volume(ellipsoid_phantom((22, 26, 18)), np.eye(4))
    ksp = simulate_kspace(vol, SimulateConfig(coils=3, calib=6, accel=3.0, noise=0.01, seed=3))
    problem, ref = kspace_problem(ksp), ksp.reference
    start = np.zeros((1, *problem.shape), np.complex64)
    plain = closing_solve(problem, start, lam=0.0, mu=0.002, iters=100)[0]
    spun = closing_solve(problem, start, lam=0.0, mu=0.002, iters=100, spin=8, spin_seed=0)[0]
    err = lambda x: float(np.sqrt(np.mean((np.abs(x) - ref) ** 2)))  # noqa: E731
    assert err(spun) < 0.9 * err(plain)  # measured 0.031 against 0.038
    np.testing.assert_array_equal(spun, closing_solve(problem, start, 0.0, 0.002, 100, spin=8, spin_seed=0)[0])
    assert np.abs(spun - closing_solve(problem, start, 0.0, 0.002, 100, spin=8, spin_seed=1)[0]).max() > 1e-4
    np.testing.assert_array_equal(plain, closing_solve(problem, start, 0.0, 0.002, 100, spin=1)[0])


def test_agreement_blend_keeps_the_sample_where_it_agrees_and_the_reference_where_it_does_not():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 1, size=(20, 11, 13)).astype(np.float32)
    sample = ref + 0.001 * rng.standard_normal(ref.shape).astype(np.float32)
    sample[:4] += 5.0  # the prior draws something else in one slab (a brain where the input shows skull)
    out = agreement_blend(sample[None], ref, tolerance=0.05)
    assert out.shape == (1, *ref.shape) and out.dtype == np.float32
    assert np.abs(out[0, 12:] - sample[12:]).max() < 1e-3  # agreement: the sample is kept
    assert np.abs(out[0, :2] - ref[:2]).max() < 1e-3  # disagreement: the reference takes over
    np.testing.assert_allclose(agreement_blend(sample[None], ref, tolerance=0.0)[0], ref)


def test_perturbed_solves_spread_like_the_data_noise():
    """Randomize-then-optimize: for A = I, no sparsity and a quadratic anchor of weight lam the solve is
    ``(y + n + lam x_bar) / (1 + lam)``, so the solutions spread by ``noise_std / (1 + lam)``; same seed, same draws."""
    clean = ellipsoid_phantom((9, 11, 7))
    problem = denoise_problem(Volume(clean, np.eye(4)), noise_std=0.05)
    anchors = np.repeat(clean[None], 400, axis=0)
    out = closing_solve(problem, anchors, lam=1.0, mu=0.0, iters=3, perturb=np.random.default_rng(0))
    assert out.std(0).mean() == pytest.approx(0.025, rel=0.03)
    assert np.abs(closing_solve(problem, anchors[:1], lam=1.0, mu=0.0, iters=3)[0] - clean).max() < 1e-6
    again = closing_solve(problem, anchors[:2], lam=1.0, mu=0.0, iters=3, perturb=np.random.default_rng(0))
    np.testing.assert_array_equal(again, out[:2])


def test_kspace_perturbations_fall_on_the_measured_samples_only(problem):
    from ldp_med.sampling.closing import _noise

    n = _noise(np.random.default_rng(0), problem.y, 0.3, problem.operator.mask)
    measured = np.broadcast_to(problem.operator.mask.numpy().astype(bool), n.shape)
    assert n.dtype == problem.y.dtype and (n.numpy()[~measured] == 0).all()
    assert np.std(n.numpy()[measured].real) == pytest.approx(0.3, rel=0.05)


def test_the_torch_soft_threshold_is_sigpys():
    from sigpy.thresh import soft_thresh

    from ldp_med.sampling.closing import soft_threshold

    rng = np.random.default_rng(0)
    z = (rng.standard_normal((5, 6, 7)) + 1j * rng.standard_normal((5, 6, 7))).astype(np.complex64)
    z[0, 0, 0] = 0
    for x in (z, z.real.copy()):
        out = soft_threshold(0.7, x)
        assert out.dtype == x.dtype and np.count_nonzero(out) < np.count_nonzero(x)
        np.testing.assert_allclose(out, soft_thresh(0.7, x), atol=1e-6, rtol=0)


def _head_in_air(shape=(23, 27, 21)):
    """A bright ball (the head) with a dark cavity inside it (a ventricle), in a field of view of air."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    head = ((r < 8) & (r > 2.5)).astype(np.float32)
    return head, r


def test_air_is_what_connects_to_the_field_of_views_faces_not_dark_tissue_inside():
    from ldp_med.sampling.closing import air_mask

    head, r = _head_in_air()
    air = air_mask(head, 0.1)
    assert air[0, 0, 0] and air[-1, -1, -1] and air[r > 12].all()
    assert not air[r < 10].any()  # neither the head nor the cavity inside it (2 voxels of erosion from the head)
    assert not air_mask(head, 0.0).any()


def test_air_gain_removes_noise_only_air_and_keeps_what_the_noise_does_not_explain():
    from ldp_med.sampling.closing import air_gain, air_mask

    head, r = _head_in_air()
    rng = np.random.default_rng(0)
    noise = 0.02 * np.abs(rng.standard_normal(head.shape)).astype(np.float32)
    image = head + noise
    gain = air_gain(image, image**2, 0.02**2, k=2.0, floor=0.1)  # twice the noise: a local energy is a noisy estimate
    assert gain.dtype == np.float32 and gain.min() >= 0 and gain.max() <= 1
    assert (gain[r < 8] == 1).all()  # the head and its cavity are untouched
    assert np.median(gain[r > 12]) < 0.1  # air that holds only the noise goes to 0
    # air holding four times the noise energy (a reference's own noise, ghosts) keeps what 2 N leaves: sqrt(1/2)
    loud = head + 2 * noise
    kept = air_gain(loud, loud**2, 0.02**2, k=2.0, floor=0.1)
    assert np.median(kept[r > 12]) == pytest.approx(np.sqrt(1 / 2), abs=0.1)
    assert (air_gain(image, image**2, 0.02**2, k=0.0, floor=0.1) == 1).all()
    # the caller's mask (reconstruct._close computes it once for the gains and the blur) is the one used
    np.testing.assert_array_equal(air_gain(image, image**2, 0.02**2, k=2.0, floor=0.1, air=air_mask(image, 0.1)), gain)
    assert (air_gain(image, image**2, 0.02**2, k=2.0, floor=0.1, air=np.zeros(image.shape, bool)) == 1).all()


def test_without_erosion_the_air_step_reaches_the_voxels_next_to_the_head_and_denoising_takes_it():
    """``air_erode`` 0 (denoising's setting since session 48) takes the noise out of the air up to the head's edge,
    where 2 voxels of erosion left a band of noise; the head stays whole; k-space keeps its 2."""
    from ldp_med.config import ClosingConfig
    from ldp_med.sampling.closing import air_gain
    from ldp_med.tasks import with_task_settings

    head, r = _head_in_air()
    image = 0.2 * head + 0.02 * np.abs(np.random.default_rng(0).standard_normal(head.shape)).astype(np.float32)
    band = (r > 11) & (r < 12)  # 3-4 voxels outside the head: the smoothed air's edge
    gains = {e: air_gain(image, image**2, 0.02**2, k=1.0, floor=0.1, erode=e) for e in (0, 2)}
    assert (gains[2][band] == 1).all() and np.median(gains[0][band]) < 0.8
    assert (gains[0][r < 8] == 1).all()
    assert [with_task_settings(ClosingConfig(), "closing", t, 4.0).air_erode for t in ("denoise", "kspace")] == [0, 2]


def test_air_blur_replaces_the_air_by_its_mean_over_the_air_and_leaves_the_rest():
    from ldp_med.config import ClosingConfig
    from ldp_med.sampling.closing import air_blur, air_mask
    from ldp_med.tasks import with_task_settings

    head, r = _head_in_air((30, 32, 28))
    rng = np.random.default_rng(2)
    samples = np.stack([head + 0.05 + 0.02 * rng.standard_normal(head.shape) for _ in range(2)]).astype(np.float32)
    air = air_mask(samples.mean(0), 0.2, erode=0)
    out = air_blur(samples, air, 1.5)
    assert out.shape == samples.shape and out.dtype == samples.dtype
    np.testing.assert_array_equal(out[:, ~air], samples[:, ~air])  # the head and its cavity untouched
    far = air & (r > 12)
    assert out[:, far].std() < 0.3 * samples[:, far].std()  # the air's noise pattern goes
    assert abs(out[:, far].mean() - samples[:, far].mean()) < 0.005  # its level stays
    beside = air & (r < 10)  # the head does not leak into the air next to it
    assert abs(out[:, beside].mean() - 0.05) < 0.01
    assert air_blur(samples, air, 0.0) is samples
    complex_out = air_blur(samples.astype(np.complex64), air, 1.5)
    np.testing.assert_allclose(complex_out.real, out, atol=1e-6)
    assert [with_task_settings(ClosingConfig(), "closing", t, 4.0).air_blur for t in ("denoise", "kspace")] == [1.5, 0.0]


def test_kspace_closing_takes_the_noise_out_of_the_air_and_leaves_the_head():
    """``closing.air`` through ``reconstruct._close``: on a phantom in a field of view of air, 8 coils, the air of the
    closed image loses its noise (its energy falls), the head inside keeps its values."""
    import dataclasses

    from ldp_med.config import ReconstructConfig
    from ldp_med.reconstruct import _close, settle

    shape = (24, 30, 26)
    truth = np.pad(ellipsoid_phantom((12, 16, 14)), [((n - m) // 2, n - m - (n - m) // 2) for n, m in zip(shape, (12, 16, 14))])
    ksp = simulate_kspace(Volume(truth, np.eye(4)), SimulateConfig(coils=4, calib=8, accel=2.0, noise=0.01, seed=5))
    problem = kspace_problem(ksp)
    sample = np.asarray(problem.pinv.data, np.complex64)[None]
    base = settle(ReconstructConfig(), problem)
    closed = {air: np.abs(_close(problem, sample, dataclasses.replace(base, closing=dataclasses.replace(
        base.closing, air=air, air_floor=0.1)), None)[0][0]) for air in (0.0, 4.0)}
    outside = np.ones(shape, bool)
    outside[3:-3, 3:-3, 3:-3] = False  # far from the phantom: air
    assert (closed[4.0][outside] ** 2).mean() < 0.3 * (closed[0.0][outside] ** 2).mean()
    inside = truth > 0.1
    np.testing.assert_array_equal(closed[4.0][inside], closed[0.0][inside])


def test_denoise_closing_takes_the_rician_floor_out_of_the_air_with_the_tissues_sigma():
    """``closing.air`` 1 for denoising through ``reconstruct._close``: the noisy input's air (Rayleigh, mean 1.25 sigma)
    falls towards 0 when sigma is estimated from the tissue (``magnitude_noise``), the head keeps its values; with the
    pooled (low) estimate of the problem itself, less of the floor goes."""
    import dataclasses

    from ldp_med.config import ReconstructConfig
    from ldp_med.physics.noise import add_rician_noise
    from ldp_med.reconstruct import _close, magnitude_noise, settle

    shape = (38, 42, 36)
    truth = np.pad(ellipsoid_phantom((26, 30, 24)), [((n - m) // 2, n - m - (n - m) // 2) for n, m in zip(shape, (26, 30, 24))])
    noisy = add_rician_noise(torch.from_numpy(truth), 0.05, torch.Generator().manual_seed(1)).numpy()
    problem = denoise_problem(Volume(noisy, np.eye(4)))
    assert magnitude_noise(problem) > 1.1 * problem.noise_std  # the problem's pooled estimate runs low
    sample = np.asarray(problem.pinv.data, np.float32)[None]
    base = settle(ReconstructConfig(task="denoise"), problem)

    def closed(air, p=problem):
        c = dataclasses.replace(base.closing, air=air, air_floor=0.1, image_agreement=0.0)
        return _close(p, sample, dataclasses.replace(base, closing=c), None)[0][0]

    outside = np.ones(shape, bool)
    outside[4:-4, 4:-4, 4:-4] = False  # far from the phantom: air
    off, on = closed(0.0), closed(1.0)
    assert (on[outside] ** 2).mean() < 0.25 * (off[outside] ** 2).mean()
    inside = truth > 0.1
    np.testing.assert_array_equal(on[inside], off[inside])
    given = dataclasses.replace(problem, noise_std=problem.noise_std, noise_source="given")  # the low sigma, as given
    assert (closed(1.0, given)[outside] ** 2).mean() > 1.5 * (on[outside] ** 2).mean()


def test_the_solve_leaves_no_operator_cache_behind(problem):
    # the normal operator's shifted maps would otherwise live on through the next pass (0.9 GB at 1 mm)
    anchor = np.zeros((1, *problem.shape), np.complex64)
    closing_solve(problem, anchor, lam=0.0, mu=0.002, iters=3)
    assert getattr(problem.operator, "_shifted", None) is None
    problem.operator.normal(torch.zeros((1, *problem.shape), dtype=torch.complex64))
    assert problem.operator._shifted is not None  # the check above can fail: normal() does keep it
    closing_solve(problem, anchor, lam=0.0, mu=0.002, iters=3)
    assert problem.operator._shifted is None
