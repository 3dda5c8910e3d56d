"""Noise and phase simulation: statistics, determinism, smoothness; noise estimation from data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ldp_med.physics.noise import (
    add_gaussian_noise,
    add_rician_noise,
    rician_mean,
    complex_gaussian_noise,
    estimate_image_noise,
    estimate_kspace_noise,
    estimate_rician_noise,
    smooth_random_phase,
)
from tests.conftest import ellipsoid_phantom

N = (50, 40, 50)  # 100k samples: std estimates within ~1%


def test_complex_gaussian_noise_stats_and_seed():
    n = complex_gaussian_noise(N, 0.3, 0)
    assert n.shape == N and n.dtype == torch.complex64
    assert n.real.std().item() == pytest.approx(0.3, rel=0.02)
    assert n.imag.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(n.real.mean().item()) < 0.01
    assert abs(torch.corrcoef(torch.stack([n.real.flatten(), n.imag.flatten()]))[0, 1]) < 0.02
    torch.testing.assert_close(n, complex_gaussian_noise(N, 0.3, torch.Generator().manual_seed(0)))
    assert not torch.equal(n, complex_gaussian_noise(N, 0.3, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_add_gaussian_noise(dtype):
    x = torch.ones(N, dtype=dtype)
    y = add_gaussian_noise(x, 0.5, 3)
    assert y.dtype == dtype and y.shape == N
    r = y - x
    assert r.real.std().item() == pytest.approx(0.5, rel=0.02)
    if dtype.is_complex:
        assert r.imag.std().item() == pytest.approx(0.5, rel=0.02)
    torch.testing.assert_close(y, add_gaussian_noise(x, 0.5, 3))


def test_rician_statistics():
    sigma = 0.2
    zero = add_rician_noise(torch.zeros(N), sigma, 0)
    assert zero.dtype == torch.float32 and bool((zero >= 0).all())
    # magnitude of pure noise is Rayleigh: mean sigma sqrt(pi/2), second moment 2 sigma^2
    assert zero.mean().item() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.02)
    assert zero.pow(2).mean().item() == pytest.approx(2 * sigma**2, rel=0.02)
    # high SNR: approximately Gaussian around sqrt(A^2 + sigma^2) with std sigma
    a = 20 * sigma
    high = add_rician_noise(torch.full(N, a), sigma, 1)
    assert high.mean().item() == pytest.approx(math.sqrt(a**2 + sigma**2), rel=0.005)
    assert high.std().item() == pytest.approx(sigma, rel=0.03)
    # E[M^2] = A^2 + 2 sigma^2 holds at any SNR
    mid = add_rician_noise(torch.full(N, sigma), sigma, 2)
    assert mid.pow(2).mean().item() == pytest.approx(3 * sigma**2, rel=0.02)
    with pytest.raises(ValueError, match="real"):
        add_rician_noise(torch.zeros(3, dtype=torch.complex64), sigma, 0)


def test_smooth_random_phase():
    shape = (24, 22, 25)
    p = smooth_random_phase(shape, 0, max_phase=2.0)
    assert p.shape == shape and p.dtype == torch.float32
    assert p.abs().max().item() == pytest.approx(2.0, rel=1e-5)
    assert bool((p.abs() <= 2.0).all())
    torch.testing.assert_close(p, smooth_random_phase(shape, 0, max_phase=2.0))
    assert not torch.equal(p, smooth_random_phase(shape, 1, max_phase=2.0))
    for dim in range(3):
        d = p.diff(dim=dim)
        assert d.abs().max().item() < 0.25 * 2.0 * 2  # < 1 rad per voxel for a 4 rad range
        assert d.pow(2).mean().item() / p.var().item() < 0.1  # white noise would give ~2
    default = smooth_random_phase((9, 12, 10), torch.Generator().manual_seed(4))
    assert default.abs().max().item() <= math.pi + 1e-6


def test_rician_mean_matches_monte_carlo_at_every_snr():
    sigma = 0.02
    mags = torch.tensor([0.0, 0.5 * sigma, sigma, 3 * sigma, 20 * sigma])
    draws = add_rician_noise(mags[:, None].expand(5, 400_000).contiguous(), sigma, 0).mean(1)
    torch.testing.assert_close(rician_mean(mags, sigma), draws, rtol=2e-3, atol=2e-5)
    assert float(rician_mean(torch.tensor([0.0]), sigma)) == pytest.approx(sigma * (math.pi / 2) ** 0.5)


def test_kspace_noise_estimate_on_pure_noise():
    g = torch.Generator().manual_seed(3)
    k = complex_gaussian_noise((2, 15, 16, 14), 0.02, g).numpy()
    mask = (np.random.default_rng(0).random((1, 16, 14)) < 0.5).astype(np.uint8)
    assert estimate_kspace_noise(k * mask, mask) == pytest.approx(0.02, rel=0.15)
    assert estimate_kspace_noise(k * 0, np.zeros((1, 16, 14))) == 0.0


def test_image_noise_estimate():
    rng = np.random.default_rng(1)
    vol = ellipsoid_phantom((21, 24, 19)) * 100 + rng.normal(0, 5.0, (21, 24, 19)).astype(np.float32)
    assert estimate_image_noise(vol) == pytest.approx(5.0, rel=0.3)


def test_rician_noise_estimate_reads_sigma_from_the_tissue_not_the_rayleigh_air():
    """A smooth head (a fifth of the field of view) in air with Rician noise: the air's magnitude noise spreads 0.66 sigma,
    so the estimate over every voxel runs low; the tissue's is sigma."""
    rng = np.random.default_rng(2)
    shape, sigma = (41, 46, 39), 0.05
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    clean = torch.from_numpy(np.where(r < 15, 0.6 + 0.3 * np.cos(grid[0] / 5), 0).astype(np.float32))  # tissue, air
    noisy = add_rician_noise(clean, sigma, torch.Generator().manual_seed(3)).numpy()
    assert noisy.shape == shape
    assert estimate_image_noise(noisy) < 0.9 * sigma  # the pooled estimate: low
    assert estimate_rician_noise(noisy) == pytest.approx(sigma, rel=0.08)
    flat = rng.normal(0, 5.0, (21, 24, 19)).astype(np.float32)  # no tissue at all: scikit-image's estimate
    assert estimate_rician_noise(flat) == estimate_image_noise(flat)


def test_rician_noise_estimate_of_a_part_with_tissue_to_its_faces_is_not_lowered_by_the_border():
    """A small part of a brain, tissue up to every face (like nibabel's 33x41x25 real part): the wavelet coefficients at
    the faces see the noise's mirror image in the symmetric extension and spread less than sigma; 15% low when counted."""
    shape, sigma = (33, 41, 25), 0.05
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    clean = torch.from_numpy(0.7 + 0.2 * np.sin(grid[0] / 4) * np.cos(grid[1] / 6) + 0.1 * np.cos(grid[2] / 3))
    noisy = add_rician_noise(clean, sigma, torch.Generator().manual_seed(4)).numpy()
    assert estimate_rician_noise(noisy) == pytest.approx(sigma, rel=0.05)
