"""Data-consistency rules and the noise-driven DC weight, on odd-sized volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldp_med.config import SimulateConfig
from ldp_med.io.volume import Volume
from ldp_med.physics.degradations import SliceAverageOperator
from ldp_med.physics.mri import MRIOperator
from ldp_med.physics.operators import DenoiseOperator
from ldp_med.physics.simulate import simulate_kspace
from ldp_med.sampling.consistency import (
    ImageDC,
    KSpaceDC,
    dc_weight,
    smooth_phase,
)
from tests.conftest import ellipsoid_phantom

SHAPE = (9, 12, 10)


def test_dc_weight_follows_the_noise():
    quiet, noisy = dc_weight(0.005, 1.0), dc_weight(0.05, 1.0)
    assert noisy > quiet > 0
    assert dc_weight(0.05, 1.0) == pytest.approx((0.05 / 0.03) ** 2)
    assert dc_weight(0.05, 100.0) < dc_weight(0.05, 1.0)  # same noise, stronger signal: trust the data
    assert dc_weight(0.0, 1.0) == pytest.approx(1e-3)  # noiseless: the floor keeps the solve well posed
    assert dc_weight(0.05, 1.0, lam_scale=2.0) == pytest.approx(2 * noisy)
    for bad in [dict(noise_std=-1.0), dict(signal_scale=0.0), dict(prior_error=float("nan"))]:
        args = {"noise_std": 0.01, "signal_scale": 1.0, **bad}
        with pytest.raises(ValueError):
            dc_weight(**args)


def test_smooth_phase_keeps_a_constant_phase():
    x = torch.polar(torch.rand(1, *SHAPE) + 0.5, torch.full((1, *SHAPE), 0.7))
    torch.testing.assert_close(smooth_phase(x, 1.5), torch.full((1, *SHAPE), 0.7), atol=1e-5, rtol=0)
    torch.testing.assert_close(smooth_phase(x, 0), torch.full((1, *SHAPE), 0.7), atol=1e-5, rtol=0)


def test_image_dc_denoise_closed_form_and_batch():
    y = torch.rand(1, *SHAPE)
    x0 = torch.rand(3, *SHAPE)
    rule = ImageDC(DenoiseOperator(), y, lam=0.5)
    x = rule(x0)
    torch.testing.assert_close(x, (y + 0.5 * x0) / 1.5)
    assert (rule.residual_norm(x) < rule.residual_norm(x0)).all()
    with pytest.raises(ValueError):
        ImageDC(DenoiseOperator(), y, lam=0.0)


def test_image_dc_superres_fits_the_thick_slices():
    op = SliceAverageOperator(2, 1)
    truth = torch.rand(1, *SHAPE)
    y = op.A(truth)
    x0 = torch.rand(2, *SHAPE)
    x = ImageDC(op, y, lam=1e-4)(x0)
    assert x.shape == x0.shape
    assert float(ImageDC(op, y, 1.0).residual_norm(x).max()) < 1e-3 * float(ImageDC(op, y, 1.0).residual_norm(x0).min())


@pytest.fixture(scope="module")
def multicoil():
    vol = Volume(ellipsoid_phantom((11, 12, 10)), np.eye(4))
    ksp = simulate_kspace(vol, SimulateConfig(coils=3, calib=4, accel=2.5, noise=0.001, seed=2))
    op = MRIOperator(torch.from_numpy(ksp.mask.astype(np.float32)), torch.from_numpy(ksp.sensitivity_maps)[None])
    return op, torch.from_numpy(ksp.kspace)[None], ksp


def test_kspace_dc_reduces_the_residual_and_carries_the_phase(multicoil):
    op, y, ksp = multicoil
    rule = KSpaceDC(op, y, lam=1e-3, n_iter=10, phase_sigma=1.0)
    assert rule.phase.shape == (1, 11, 12, 10)
    x_prior = torch.rand(2, 11, 12, 10)
    before = rule.residual_norm(x_prior)
    xc = rule.solve(x_prior)
    assert xc.is_complex() and xc.shape == (2, 11, 12, 10)
    assert (rule.residual_norm(xc) < 0.2 * before).all()
    assert rule.phase.shape == (2, 11, 12, 10)  # one phase per posterior sample after a solve
    mag = rule(x_prior)
    assert mag.dtype == torch.float32 and (mag >= 0).all()
    rule.reset()
    assert rule.phase.shape == (1, 11, 12, 10)
    torch.testing.assert_close(rule.complex_image(x_prior).abs(), x_prior)


def test_kspace_dc_single_coil_matches_measured_samples():
    vol = Volume(ellipsoid_phantom((9, 12, 10)), np.eye(4))
    ksp = simulate_kspace(vol, SimulateConfig(coils=1, calib=4, accel=2.0, noise=0.0, seed=1))
    mask = torch.from_numpy(ksp.mask.astype(np.float32))
    op = MRIOperator(mask)
    y = torch.from_numpy(ksp.kspace)[None]
    mag = KSpaceDC(op, y, lam=1e-6)(torch.rand(1, 9, 12, 10))
    assert mag.shape == (1, 9, 12, 10) and not mag.is_complex()
    sol = KSpaceDC(op, y, lam=1e-6).solve(torch.rand(1, 9, 12, 10))
    torch.testing.assert_close(op.A(sol), y, atol=1e-4, rtol=1e-3)
