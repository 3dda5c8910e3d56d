"""Slice averaging: adjointness, closed-form data consistency, thick-slice geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldp_med.physics.degradations import (
    SliceAverageOperator,
    coarse_affine,
    fine_affine,
    fine_shape,
    slice_average,
)

SHAPE = (9, 12, 10)
B = 2


def crandn(*shape, seed=0, complex_=True):
    g = torch.Generator().manual_seed(seed)
    if not complex_:
        return torch.randn(shape, generator=g)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def inner(a, b):
    return complex((a.to(torch.complex128).conj() * b.to(torch.complex128)).sum())


CASES = [(0, 3), (1, 4), (1, 3), (2, 5), (2, 2)]


@pytest.mark.parametrize("axis,factor", CASES)
@pytest.mark.parametrize("complex_", [True, False])
def test_adjointness(axis, factor, complex_):
    op = SliceAverageOperator(factor, axis)
    x = crandn(B, *SHAPE, seed=1, complex_=complex_)
    coarse = list(SHAPE)
    coarse[axis] //= factor
    y = crandn(B, *coarse, seed=2, complex_=complex_)
    ax = op.A(x)
    assert ax.shape == (B, *coarse) and ax.dtype == x.dtype
    lhs, rhs = inner(ax, y), inner(x, op.A_adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5
    torch.testing.assert_close(op.A(op.A_adjoint(y)), y / factor)  # A A^H = I / factor


def test_forward_is_block_mean_and_checks_size():
    x = crandn(1, *SHAPE, seed=3, complex_=False)
    y = SliceAverageOperator(2, 2).A(x)
    torch.testing.assert_close(y[..., 1], x[..., 2:4].mean(-1))
    with pytest.raises(ValueError, match="multiple of factor"):
        SliceAverageOperator(4, 2).A(x)
    with pytest.raises(ValueError, match="axis"):
        SliceAverageOperator(2, 3)
    with pytest.raises(ValueError, match="factor"):
        SliceAverageOperator(0, 1)


@pytest.mark.parametrize("axis,factor", [(0, 3), (1, 2), (2, 5)])
@pytest.mark.parametrize("complex_", [True, False])
def test_dc_solve_matches_dense(axis, factor, complex_):
    tiny = (3, 4, 5)
    op = SliceAverageOperator(factor, axis)
    n = int(np.prod(tiny))
    dtype = torch.complex64 if complex_ else torch.float32
    M = op.A(torch.eye(n).reshape(n, *tiny).to(dtype)).reshape(n, -1).T.to(torch.complex128)
    x0 = crandn(B, *tiny, seed=4, complex_=complex_)
    y = op.A(crandn(B, *tiny, seed=5, complex_=complex_))
    lam = 0.2
    out = op.dc_solve(y, x0, lam)
    assert out.shape == x0.shape and out.dtype == dtype
    for b in range(B):
        lhs = M.conj().T @ M + lam * torch.eye(n, dtype=torch.complex128)
        rhs = M.conj().T @ y[b].reshape(-1).to(torch.complex128) + lam * x0[b].reshape(-1).to(torch.complex128)
        ref = torch.linalg.solve(lhs, rhs).reshape(tiny)
        err = (out[b].to(torch.complex128) - ref).norm() / ref.norm()
        assert err < 1e-4
    with pytest.raises(ValueError, match="does not match"):
        op.dc_solve(y[:1], x0, lam)


def oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.1, 0.9, 1.3])
    aff[:3, 3] = [-20.0, 5.0, 12.5]
    return aff


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("factor", [2, 3])
def test_affine_round_trip_and_block_centres(axis, factor):
    aff = oblique_affine()
    coarse = coarse_affine(aff, factor, axis)
    np.testing.assert_allclose(fine_affine(coarse, factor, axis), aff, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(coarse[:3, axis]), factor * np.linalg.norm(aff[:3, axis]))
    for block in (0, 2):
        fine_idx = np.zeros((factor, 4))
        fine_idx[:, 3] = 1
        fine_idx[:, axis] = block * factor + np.arange(factor)
        mean_fine = (aff @ fine_idx.T).T.mean(0)
        coarse_idx = np.zeros(4)
        coarse_idx[3] = 1
        coarse_idx[axis] = block
        np.testing.assert_allclose(coarse @ coarse_idx, mean_fine, atol=1e-12)
    assert fine_shape((9, 4, 5), factor, axis)[axis] == (9, 4, 5)[axis] * factor


def test_slice_average_numpy():
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((9, 12, 11))
    aff = oblique_affine()
    coarse, caff = slice_average(vol, aff, 3, 2)  # 11 slices -> 3 blocks, 2 trailing dropped
    assert coarse.shape == (9, 12, 3) and coarse.dtype == np.float32
    np.testing.assert_allclose(coarse[..., 1], vol[..., 3:6].mean(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(caff, coarse_affine(aff, 3, 2))
    assert fine_shape(coarse.shape, 3, 2) == (9, 12, 9)
    # agrees with the torch operator
    op = SliceAverageOperator(3, 2)
    ref = op.A(torch.from_numpy(vol[None, ..., :9]).float())[0].numpy()
    np.testing.assert_allclose(coarse, ref, rtol=1e-5, atol=1e-6)
    cplx, _ = slice_average(vol + 1j * vol, aff, 2, 0)
    assert cplx.dtype == np.complex64 and cplx.shape == (4, 12, 11)
    with pytest.raises(ValueError, match="smaller than factor"):
        slice_average(vol[:, :, :2], aff, 3, 2)
