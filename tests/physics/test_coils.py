"""Coil maps: birdcage normalisation, ESPIRiT recovers the simulated maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldp_med.physics.coils import birdcage_maps, espirit_maps
from ldp_med.physics.fft import fftnc

SHAPE = (9, 12, 10)


def test_birdcage_normalised():
    maps = birdcage_maps(3, SHAPE)
    assert maps.shape == (3, *SHAPE) and maps.dtype == np.complex64
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, atol=1e-5)
    # the coils see the volume differently: each map's magnitude varies over the grid
    mag = np.abs(maps)
    assert all(mag[c].max() / mag[c].min() > 1.5 for c in range(3))


def test_birdcage_object_mask():
    obj = np.zeros(SHAPE, bool)
    obj[2:7, 3:9, 2:8] = True
    maps = birdcage_maps(4, SHAPE, object_mask=obj)
    rss = (np.abs(maps) ** 2).sum(0)
    np.testing.assert_allclose(rss[obj], 1.0, atol=1e-5)
    assert np.all(maps[:, ~obj] == 0)
    with pytest.raises(ValueError, match="object_mask"):
        birdcage_maps(4, SHAPE, object_mask=obj[:-1])


@pytest.mark.parametrize("coils, shape", [(3, (7, 9, 11)), (8, (10, 12, 6)), (12, (5, 6, 7))])
def test_birdcage_is_sigpys_model_a_slab_at_a_time(monkeypatch, coils, shape):
    """The slab-by-slab evaluation equals sigpy's own maps (RSS-normalised, complex64), two rings included."""
    sigpy_mri = pytest.importorskip("sigpy.mri")
    import ldp_med.physics.coils as module

    monkeypatch.setattr(module, "_BIRDCAGE_SLAB", 2 * coils * shape[1] * shape[2])  # two X planes per slab
    expected = sigpy_mri.birdcage_maps((coils, *shape), r=1.5, dtype=np.complex128)
    expected /= np.sqrt((np.abs(expected) ** 2).sum(axis=0, keepdims=True))
    np.testing.assert_allclose(birdcage_maps(coils, shape), expected.astype(np.complex64), rtol=0, atol=1e-7)


def test_birdcage_memory_is_the_maps_and_a_slab(monkeypatch):
    """sigpy's call holds a dozen float64 arrays of the whole 4-D grid (10.4 GB for 8 coils at 1 mm); slab by slab
    the peak is the complex64 maps and one slab's temporaries."""
    import tracemalloc

    import ldp_med.physics.coils as module

    coils, shape = 8, (40, 30, 20)
    slab = coils * shape[1] * shape[2] * 2  # two X planes
    monkeypatch.setattr(module, "_BIRDCAGE_SLAB", slab)
    tracemalloc.start()
    try:
        maps = birdcage_maps(coils, shape)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < maps.nbytes + 12 * 16 * slab, (peak, maps.nbytes)


def ball_phantom(n):
    g = np.mgrid[:n, :n, :n] - n // 2
    r2 = (g**2).sum(0) / (0.38 * n) ** 2
    img = np.where(r2 < 1, 1.0 - 0.5 * r2, 0.0) + 0.3 * (((g[0] - 2) ** 2 + g[1] ** 2 + g[2] ** 2) < (0.12 * n) ** 2)
    return img.astype(np.float32), r2 < 0.8


def simulate(n, coils, calib):
    img, inner = ball_phantom(n)
    maps = birdcage_maps(coils, (n, n, n))
    rng = np.random.default_rng(0)
    ksp = fftnc(torch.from_numpy(maps * img)).numpy()
    ksp = ksp + 1e-3 * (rng.standard_normal(ksp.shape) + 1j * rng.standard_normal(ksp.shape))
    # undersample everything but the calibration square of the phase-encode plane
    keep = rng.random((n, n)) < 0.3
    c = slice(n // 2 - calib // 2, n // 2 - calib // 2 + calib)
    keep[c, c] = True
    return (ksp * keep).astype(np.complex64), maps, inner


def check_span(est, true, inner):
    assert est.shape == true.shape and est.dtype == np.complex64
    corr = np.abs((est.conj() * true).sum(0))  # |<S_est, S_true>| per voxel, both unit-norm
    assert np.percentile(corr[inner], 1) > 0.9
    assert corr[inner].mean() > 0.95


def test_espirit_recovers_maps_small():
    ksp, maps, inner = simulate(16, 4, calib=8)
    check_span(espirit_maps(ksp, calib=8, kernel_width=4), maps, inner)


@pytest.mark.slow
def test_espirit_recovers_maps_24():
    ksp, maps, inner = simulate(24, 4, calib=12)
    check_span(espirit_maps(torch.from_numpy(ksp), calib=12), maps, inner)


def test_espirit_validation():
    ksp = np.zeros((4, 16, 16, 16), np.complex64)
    with pytest.raises(ValueError, match="kernel_width"):
        espirit_maps(ksp, calib=4, kernel_width=6)
    with pytest.raises(ValueError, match=r"\(C, X, Y, Z\)"):
        espirit_maps(ksp[0], calib=8)
    with pytest.raises(ValueError, match="crop"):
        espirit_maps(ksp, calib=8, kernel_width=4, crop=1.5)


def test_coil_compression_keeps_the_data_term_and_fewer_coils():
    import torch

    from ldp_med.physics.coils import compress_coils
    from ldp_med.physics.fft import fftnc
    from ldp_med.physics.masks import make_mask
    from ldp_med.physics.mri import MRIOperator

    shape = (11, 14, 13)
    maps = birdcage_maps(8, shape)
    rng = np.random.default_rng(0)
    x = (rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)
    mask = make_mask("poisson", shape[1:], 2, 4, seed=0).astype(np.float32)
    y = (mask * fftnc(torch.from_numpy(maps * x)).numpy()).astype(np.complex64)
    same_y, same_maps = compress_coils(y, maps, 1.0)
    assert same_y is y and same_maps is maps
    cy, cmaps = compress_coils(y, maps, 0.99)
    assert 1 <= cy.shape[0] < 8 and cmaps.shape == (cy.shape[0], *shape)
    assert np.linalg.norm(cy) ** 2 >= 0.99 * np.linalg.norm(y) ** 2 - 1e-3  # kept energy
    op = MRIOperator(torch.from_numpy(mask), torch.from_numpy(cmaps)[None])
    # the exact image still fits the compressed data: A' x = U^H A x = y'
    torch.testing.assert_close(op.A(torch.from_numpy(x)[None])[0], torch.from_numpy(cy), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError):
        compress_coils(y, maps, 0.0)


def test_espirit_on_a_coarse_grid_keeps_the_maps():
    """Above max_voxels the maps come from a coarser grid of the same field of view, interpolated back: they
    still span the true maps inside the object, and the grid rule divides every axis by one factor."""
    from ldp_med.physics.coils import espirit_grid

    assert espirit_grid((182, 218, 182)) == (36, 43, 36) and espirit_grid((99, 117, 95)) == (33, 39, 31)
    assert espirit_grid((32, 40, 32)) == (32, 40, 32)
    assert espirit_grid((20, 20, 20), calib=12, max_voxels=100) == (12, 12, 12)
    ksp, maps, inner = simulate(24, 4, calib=8)
    coarse = espirit_maps(ksp, calib=8, kernel_width=4, max_voxels=13 ** 3)
    assert coarse.shape == maps.shape
    np.testing.assert_allclose((np.abs(coarse) ** 2).sum(0), 1.0, atol=1e-4)
    check_span(coarse, maps, inner)
    # the interpolation's geometry: coarse voxel j of a 2x coarser grid is fine voxel 2j (centred FFT convention)
    from ldp_med.physics.coils import _upsample_maps

    inner_box = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert np.abs(_upsample_maps(maps[:, ::2, ::2, ::2], maps.shape[1:]) - maps)[inner_box].max() < 0.05
    assert np.abs(_upsample_maps(maps[:, 1::2, 1::2, 1::2], maps.shape[1:]) - maps)[inner_box].max() > 0.1
