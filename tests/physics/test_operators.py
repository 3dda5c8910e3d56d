"""MRI operator, denoise operator: adjointness on odd sizes and data-consistency solves vs dense LS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldp_med.physics.fft import fftnc, ifftnc
from ldp_med.physics.masks import make_mask
from ldp_med.physics.mri import MRIOperator, coil_combine, zero_filled
from ldp_med.physics.operators import DenoiseOperator

SHAPE = (9, 12, 10)
B = 2


def crandn(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))


def inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    return complex((a.to(torch.complex128).conj() * b.to(torch.complex128)).sum())


def assert_adjoint(op, x, y):
    lhs = inner(op.A(x), y)
    rhs = inner(x, op.A_adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-5


def random_maps(n_coils, shape, batch=1, seed=1):
    maps = crandn(batch, n_coils, *shape, seed=seed)
    return maps / maps.abs().pow(2).sum(1, keepdim=True).sqrt()


MASKS = {
    "poisson": lambda s: make_mask("poisson", s, 2, 2, seed=0),
    "random-lines": lambda s: make_mask("random-lines", s, 3, 2, seed=0),
    "equispaced-lines": lambda s: make_mask("equispaced-lines", s, 3, 2, seed=0, axis=1),
}


@pytest.mark.parametrize("kind", sorted(MASKS))
@pytest.mark.parametrize("coils", [None, 3])
def test_mri_adjointness(kind, coils):
    mask = MASKS[kind](SHAPE[1:])
    maps = None if coils is None else random_maps(coils, SHAPE, batch=B)
    op = MRIOperator(mask, maps)
    x = crandn(B, *SHAPE, seed=2)
    y = crandn(B, coils or 1, *SHAPE, seed=3)
    assert op.A(x).shape == (B, coils or 1, *SHAPE)
    assert op.A(x).dtype == torch.complex64
    assert op.A_adjoint(y).shape == (B, *SHAPE)
    assert_adjoint(op, x, y)


def test_mri_adjointness_shared_maps_and_3d_mask():
    mask = np.broadcast_to(MASKS["poisson"](SHAPE[1:]), SHAPE).copy()
    op = MRIOperator(torch.from_numpy(mask), random_maps(3, SHAPE, batch=1))
    assert_adjoint(op, crandn(B, *SHAPE, seed=4), crandn(B, 3, *SHAPE, seed=5))


@pytest.mark.parametrize("coils", [None, 3])
@pytest.mark.parametrize("mask3d", [False, True])
def test_fast_normal_equals_adjoint_of_forward(coils, mask3d):
    mask = MASKS["poisson"](SHAPE[1:])
    if mask3d:
        mask = np.broadcast_to(mask, SHAPE).copy()
    op = MRIOperator(torch.as_tensor(mask), None if coils is None else random_maps(coils, SHAPE, batch=B))
    x = crandn(B, *SHAPE, seed=6)
    torch.testing.assert_close(op.normal(x), op.A_adjoint(op.A(x)), rtol=1e-5, atol=1e-5)


def test_normal_follows_replaced_maps_and_mask():
    """The pre-shifted operands of ``normal`` are cached; replacing maps or mask must not reuse them."""
    op = MRIOperator(torch.as_tensor(MASKS["poisson"](SHAPE[1:])), random_maps(3, SHAPE, batch=B))
    x = crandn(B, *SHAPE, seed=6)
    op.normal(x)
    op.maps = random_maps(3, SHAPE, batch=B, seed=9)
    torch.testing.assert_close(op.normal(x), op.A_adjoint(op.A(x)), rtol=1e-5, atol=1e-5)
    op.mask = MRIOperator(MASKS["random-lines"](SHAPE[1:])).mask
    torch.testing.assert_close(op.normal(x), op.A_adjoint(op.A(x)), rtol=1e-5, atol=1e-5)


def test_fully_sampled_normal_is_identity():
    x = crandn(B, *SHAPE, seed=6)
    ones = np.ones(SHAPE[1:], np.float32)
    for maps in (None, random_maps(3, SHAPE)):
        torch.testing.assert_close(MRIOperator(ones, maps).normal(x), x, atol=1e-5, rtol=1e-5)


def test_single_coil_forward_is_masked_fft():
    mask = MASKS["random-lines"](SHAPE[1:])
    x = crandn(B, *SHAPE, seed=7)
    y = MRIOperator(mask).A(x)
    torch.testing.assert_close(y[:, 0], torch.from_numpy(mask) * fftnc(x))


# --- data consistency against a dense least-squares solve -------------------------------------

TINY = (3, 4, 5)


def dense_matrix(apply, n_in_shape):
    """Columns = apply(basis vector); complex128."""
    n = int(np.prod(n_in_shape))
    eye = torch.eye(n, dtype=torch.complex64).reshape(n, *n_in_shape)
    cols = apply(eye)
    return cols.reshape(n, -1).T.to(torch.complex128)


def dense_dc(M, y, x0, lam):
    n = M.shape[1]
    lhs = M.conj().T @ M + lam * torch.eye(n, dtype=torch.complex128)
    rhs = M.conj().T @ y.reshape(-1).to(torch.complex128) + lam * x0.reshape(-1).to(torch.complex128)
    return torch.linalg.solve(lhs, rhs).reshape(x0.shape)


def rel_err(a, b):
    return float((a.to(torch.complex128) - b.to(torch.complex128)).norm() / b.to(torch.complex128).norm())


@pytest.mark.parametrize("coils", [None, 3])
def test_mri_dc_solve_matches_dense(coils):
    mask = np.zeros(TINY[1:], np.float32)
    mask[[0, 2, 2, 3], [1, 2, 4, 0]] = 1
    maps = None if coils is None else random_maps(coils, TINY, batch=B, seed=8)
    op = MRIOperator(mask, maps)
    x_true = crandn(B, *TINY, seed=9)
    y = op.A(x_true) + 0.1 * crandn(B, coils or 1, *TINY, seed=10) * torch.from_numpy(mask)
    x0 = crandn(B, *TINY, seed=11)
    lam = 0.3
    out = op.dc_solve(y, x0, lam, n_iter=200)
    assert out.shape == (B, *TINY) and out.dtype == torch.complex64
    for b in range(B):
        single = MRIOperator(mask, None if maps is None else maps[b : b + 1])
        M = dense_matrix(lambda e: single.A(e), TINY)
        ref = dense_dc(M, y[b], x0[b], lam)
        assert rel_err(out[b], ref) < 1e-4


def test_single_coil_dc_tensor_lam_per_batch():
    mask = np.eye(4, 5, dtype=np.float32)
    op = MRIOperator(mask)
    y, x0 = crandn(B, 1, *TINY, seed=12), crandn(B, *TINY, seed=13)
    lam = torch.tensor([0.1, 2.0]).reshape(B, 1, 1, 1)
    out = op.dc_solve(y, x0, lam)
    for b in range(B):
        torch.testing.assert_close(out[b : b + 1], op.dc_solve(y[b : b + 1], x0[b : b + 1], float(lam[b])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_denoise_operator(dtype):
    op = DenoiseOperator()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, *TINY, generator=g).to(dtype)
    y = torch.randn(B, *TINY, generator=g).to(dtype)
    assert_adjoint(op, x.to(torch.complex64), y.to(torch.complex64))
    out = op.dc_solve(y, x, 0.5)
    assert out.dtype == dtype
    M = torch.eye(int(np.prod(TINY)), dtype=torch.complex128)
    ref = dense_dc(M, y[0], x[0], 0.5)
    assert rel_err(out[0], ref) < 1e-6
    # the base-class CG path agrees with the closed form
    cg = super(DenoiseOperator, op).dc_solve(y, x, 0.5, n_iter=5)
    torch.testing.assert_close(cg, out, atol=1e-5, rtol=1e-5)


# --- validation ------------------------------------------------------------------------------


def test_mask_and_maps_validation():
    with pytest.raises(ValueError, match="0 or 1"):
        MRIOperator(np.full((12, 10), 0.5, np.float32))
    with pytest.raises(ValueError, match="mask must have shape"):
        MRIOperator(np.ones((1, 1, 12, 10), np.float32))
    with pytest.raises(ValueError, match="complex"):
        MRIOperator(np.ones((12, 10), np.float32), torch.ones(1, 3, *SHAPE))
    with pytest.raises(ValueError, match="5 dims"):
        MRIOperator(np.ones((12, 10), np.float32), crandn(3, *SHAPE))
    with pytest.raises(ValueError, match="does not match the mask"):
        MRIOperator(np.ones((12, 11), np.float32), random_maps(3, SHAPE))


def test_data_shape_mismatch_raises():
    op = MRIOperator(np.ones((12, 10), np.float32), random_maps(3, SHAPE, batch=B))
    with pytest.raises(ValueError, match="does not match"):
        op.A(crandn(B, 9, 12, 11))
    with pytest.raises(ValueError, match="coils"):
        op.A_adjoint(crandn(B, 2, *SHAPE))
    with pytest.raises(ValueError, match="batch"):
        op.A(crandn(3, *SHAPE))
    with pytest.raises(ValueError, match=r"\(B, X, Y, Z\)"):
        op.A(crandn(*SHAPE))
    with pytest.raises(ValueError, match="lam"):
        MRIOperator(np.ones((12, 10), np.float32)).dc_solve(crandn(1, 1, *SHAPE), crandn(1, *SHAPE), 0.0)


def test_coil_combine_and_zero_filled():
    maps = random_maps(3, SHAPE)
    x = crandn(B, *SHAPE, seed=14)
    coil_imgs = maps * x[:, None]
    torch.testing.assert_close(coil_combine(coil_imgs, maps), x, atol=1e-5, rtol=1e-5)
    rss = coil_combine(coil_imgs)
    assert rss.dtype == torch.float32
    torch.testing.assert_close(rss, x.abs(), atol=1e-5, rtol=1e-5)  # sum |S|^2 = 1

    mask = MASKS["poisson"](SHAPE[1:])
    m = torch.from_numpy(mask)
    y = m * fftnc(coil_imgs)
    zf_maps = zero_filled(y, mask, maps)
    torch.testing.assert_close(zf_maps, MRIOperator(mask, maps).A_adjoint(y))
    zf_rss = zero_filled(y, mask)
    assert zf_rss.dtype == torch.complex64 and float(zf_rss.imag.abs().max()) == 0.0
    torch.testing.assert_close(zf_rss.real, ifftnc(y).abs().pow(2).sum(1).sqrt(), atol=1e-5, rtol=1e-5)
    zf_single = zero_filled(y[:, :1], mask)
    torch.testing.assert_close(zf_single, ifftnc(y[:, 0]))


def test_multi_coil_dc_solves_samples_in_chunks_within_the_byte_budget(monkeypatch):
    # 5 samples, budget for 2: chunks (2, 2, 1); each chunk is the batched CG of its samples alone, and the whole
    # batch within the budget is one batched CG (the samples share step sizes), as before chunking existed
    import ldp_med.physics.mri as mri

    mask, coils, n = make_mask("poisson", SHAPE[1:], 2, 2, seed=0), 3, 5
    op = MRIOperator(mask, random_maps(coils, SHAPE, seed=14))
    y, x0 = crandn(n, coils, *SHAPE, seed=15), crandn(n, *SHAPE, seed=16)
    lam = torch.linspace(0.1, 2.0, n).reshape(n, 1, 1, 1)
    whole = op.dc_solve(y, x0, lam, n_iter=4)
    batched = super(MRIOperator, op).dc_solve
    monkeypatch.setattr(mri, "DC_BATCH_BYTES", 2 * 8 * coils * int(np.prod(SHAPE)))
    chunked = op.dc_solve(y, x0, lam, n_iter=4)
    expected = torch.cat([batched(y[i : i + 2], x0[i : i + 2], lam[i : i + 2], 4) for i in (0, 2, 4)])
    torch.testing.assert_close(chunked, expected, rtol=0, atol=0)
    torch.testing.assert_close(whole, batched(y, x0, lam, 4), rtol=0, atol=0)
    assert not torch.equal(chunked, whole)  # shared step sizes differ between the two groupings
    converged = op.dc_solve(y, x0, 0.7, n_iter=300)  # the same fixed point either way
    monkeypatch.setattr(mri, "DC_BATCH_BYTES", 1 << 40)
    torch.testing.assert_close(converged, op.dc_solve(y, x0, 0.7, n_iter=300), rtol=1e-4, atol=1e-4)


def test_release_drops_the_normal_operators_cache_and_the_next_call_rebuilds_it():
    op = MRIOperator(make_mask("poisson", SHAPE[1:], 2, 2, seed=0), random_maps(3, SHAPE, seed=17))
    x = crandn(1, *SHAPE, seed=18)
    before = op.normal(x)
    assert op._shifted is not None
    op.release()
    assert op._shifted is None
    torch.testing.assert_close(op.normal(x), before, rtol=0, atol=0)
    DenoiseOperator().release()  # every operator has it (a no-op where nothing is kept)


def test_the_normal_operator_in_place_is_still_differentiable():
    """``normal`` works in place without autograd; with it, its gradient is that of ``A^H A`` (``dc_solve`` unrolls CG
    through it)."""
    op = MRIOperator(torch.as_tensor(MASKS["poisson"](SHAPE[1:])), random_maps(3, SHAPE, batch=1))
    x = crandn(B, *SHAPE, seed=6).requires_grad_(True)
    w = crandn(B, *SHAPE, seed=7)
    (g_fast,) = torch.autograd.grad((op.normal(x) * w).real.sum(), x)
    (g_ref,) = torch.autograd.grad((op.A_adjoint(op.A(x)) * w).real.sum(), x)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-5, atol=1e-5)
    lam = torch.full((B, 1, 1, 1), 0.5, requires_grad=True)
    (g_lam,) = torch.autograd.grad(op.dc_solve(op.A(x.detach()), x.detach(), lam, 3).abs().sum(), lam)
    assert torch.isfinite(g_lam).all()
