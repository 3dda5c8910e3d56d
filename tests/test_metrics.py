import numpy as np
import pytest

from ldp_med.metrics import evaluate, nmse, psnr, ssim


def test_metrics_known_values():
    rng = np.random.default_rng(0)
    ref = rng.random((9, 12, 10)).astype(np.float32)
    assert psnr(ref, ref) == np.inf or psnr(ref, ref) > 100
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert nmse(ref, ref) == 0.0
    noisy = ref + 0.01
    # constant offset 0.01 on data range ~1: PSNR = 20 log10(range / 0.01)
    expected = 20 * np.log10((ref.max() - ref.min()) / 0.01)
    assert psnr(noisy, ref) == pytest.approx(expected, abs=1e-3)
    assert nmse(noisy, ref) == pytest.approx(np.sum(0.01**2 * np.ones_like(ref)) / np.sum(ref.astype(np.float64) ** 2), rel=1e-4)


def test_worse_reconstruction_scores_worse():
    rng = np.random.default_rng(1)
    ref = rng.random((11, 9, 13))
    a = ref + 0.01 * rng.standard_normal(ref.shape)
    b = ref + 0.1 * rng.standard_normal(ref.shape)
    sa, sb = evaluate(a, ref), evaluate(b, ref)
    assert sa["psnr"] > sb["psnr"] and sa["ssim"] > sb["ssim"] and sa["nmse"] < sb["nmse"]


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))


def test_std_map_calibration_on_a_known_error():
    from ldp_med.metrics import ause, coverage, std_scale_for

    rng = np.random.default_rng(0)
    std = rng.uniform(0.5, 2.0, size=200_000)
    error = rng.normal(size=std.shape) * std  # the std is exactly the error's scale
    assert coverage(error, std) == pytest.approx(0.90, abs=0.005)
    assert coverage(error, 0.5 * std) == pytest.approx(0.59, abs=0.01)  # P(|N| <= 0.82)
    assert std_scale_for(error, 0.5 * std) == pytest.approx(2.0, rel=0.02)
    assert ause(error, np.abs(error)) == 0.0  # the oracle ranking
    assert 0 < ause(error, std) < ause(error, rng.uniform(size=std.shape))  # informative < random
