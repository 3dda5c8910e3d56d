"""Self-similarity super-resolution (ldp_med.selfsim): data consistency, a gain over cubic, seeds, config."""

import numpy as np
import pytest
from scipy import ndimage

from ldp_med.baselines import cubic_upsample
from ldp_med.config import BaselineConfig
from ldp_med.errors import ConfigError
from ldp_med.physics.degradations import SliceAverageOperator
from ldp_med.selfsim import _consistent_cubic, _fit, mlp, selfsim_upsample


def _thick(fine: np.ndarray, factor: int, axis: int) -> np.ndarray:
    import torch

    return SliceAverageOperator(factor, axis).A(torch.from_numpy(fine)[None])[0].numpy()


@pytest.fixture(scope="module")
def fine():
    """An isotropic texture of edges on an odd grid: thresholded smooth noise, slightly blurred."""
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.standard_normal((41, 39, 40)), 2.0)
    return ndimage.gaussian_filter((field > 0).astype(np.float32) + 0.5 * (field > 0.1), 0.7).astype(np.float32)


@pytest.mark.parametrize("factor,axis", [(2, 2), (3, 0)])
def test_the_thin_slices_average_back_to_the_input(fine, factor, axis):
    n = fine.shape[axis] // factor * factor
    coarse = _thick(np.take(fine, np.arange(n), axis=axis).copy(), factor, axis)
    out = selfsim_upsample(coarse, factor, axis, steps=20)
    assert out.shape == tuple(s * factor if a == axis else s for a, s in enumerate(coarse.shape))
    np.testing.assert_allclose(_thick(out, factor, axis), coarse, atol=1e-5)


def test_it_learns_the_slices_cubic_interpolation_blurs(fine):
    """Trained on the input's own in-plane detail, it is closer to the thin slices than cubic interpolation, and
    than cubic made consistent with the input (its fallback)."""
    coarse = _thick(fine, 2, 2)
    err_cubic = np.mean((cubic_upsample(coarse, 2, 2) - fine) ** 2)
    err_consistent = np.mean((_consistent_cubic(coarse, 2, 2) - fine) ** 2)
    err_self = np.mean((selfsim_upsample(coarse, 2, 2, steps=300) - fine) ** 2)
    assert err_consistent < err_cubic
    assert err_self < 0.9 * err_consistent


def test_a_net_that_does_not_beat_cubic_on_held_out_slices_gets_no_weight():
    """The weight of the net's change to cubic is fitted on the held-out rows: where cubic's deviations are the
    held-out truth, any change only adds error, and the weight is 0."""
    import torch

    g = torch.Generator().manual_seed(0)
    rows, targets = torch.randn(500, 25, generator=g), torch.randn(500, 2, generator=g)
    test_rows, base = torch.randn(200, 25, generator=g), torch.randn(200, 2, generator=g)
    assert _fit(mlp(25, 2, 16), rows, targets, test_rows, base, base, 50, g) == 0.0


def test_same_seed_same_result_other_seed_other(fine):
    coarse = _thick(fine, 2, 2)
    a, b = (selfsim_upsample(coarse, 2, 2, steps=30, seed=1) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, selfsim_upsample(coarse, 2, 2, steps=30, seed=2))


def test_config_rejects_empty_settings():
    with pytest.raises(ConfigError, match="selfsim_steps"):
        BaselineConfig(selfsim_steps=0)
