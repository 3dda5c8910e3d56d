"""Blind-spot self-supervised denoising (ldp_med.noise2self): the blind spot, its non-local means, a gain over NLM, the
posterior's weight, seeds, config, the CLI."""

import numpy as np
import pytest
from scipy import ndimage

from ldp_med.baselines import denoise_nlm
from ldp_med.config import BaselineConfig
from ldp_med.errors import ConfigError
from ldp_med.noise2self import _blind_nlm, _Neighbourhoods, _posterior, noise2self_denoise

SIGMA = 0.05


@pytest.fixture(scope="module")
def pair():
    """(clean, noisy): a texture of smooth blobs and edges on an odd grid, and it with Gaussian noise."""
    rng = np.random.default_rng(5)
    field = ndimage.gaussian_filter(rng.standard_normal((31, 29, 27)), 2.5)
    clean = ndimage.gaussian_filter((field > 0).astype(np.float32) * (0.6 + 4 * field), 0.8).clip(0, 1)
    return clean.astype(np.float32), (clean + SIGMA * rng.standard_normal(clean.shape)).astype(np.float32)


def test_the_neighbourhood_leaves_the_voxel_itself_out():
    x = np.random.default_rng(0).standard_normal((7, 8, 9)).astype(np.float32)
    index = np.ravel_multi_index((3, 4, 4), x.shape)
    rows = _Neighbourhoods(x, 1)(np.array([index]))[0].numpy()
    expected = np.delete(x[2:5, 3:6, 3:6].reshape(-1), 13)  # the 3x3x3 block without its centre
    np.testing.assert_array_equal(rows, expected)
    y = x.copy()
    y[3, 4, 4] += 100.0  # the voxel's own value never reaches its row
    np.testing.assert_array_equal(_Neighbourhoods(y, 1)(np.array([index]))[0].numpy(), rows)


def test_it_beats_non_local_means_on_a_texture(pair):
    clean, noisy = pair
    err = lambda a: float(np.mean((a - clean) ** 2))  # noqa: E731
    out = noise2self_denoise(noisy, SIGMA, steps=600)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert err(out) < 0.4 * err(noisy)
    assert err(out) < err(denoise_nlm(noisy))


def _blind_nlm_by_definition(x: np.ndarray, sigma: float, search: int) -> np.ndarray:
    """_blind_nlm voxel by voxel: pairs of 3x3x3 patch voxels both inside and neither the voxel itself."""
    floor, out = 2 * sigma**2, np.zeros((4,) + x.shape)
    inside = lambda q: all(0 <= a < n for a, n in zip(q, x.shape))  # noqa: E731
    steps = [np.array(d) - search for d in np.ndindex(*(2 * search + 1,) * 3)]
    for p in np.ndindex(*x.shape):
        p = np.array(p)
        weights, values, best = [], [], (np.inf, 0.0)
        for d in steps:
            if not d.any() or not inside(p + d):
                continue
            pairs = [(p + e, p + d + e) for e in (np.array(e) - 1 for e in np.ndindex(3, 3, 3))
                     if inside(p + e) and inside(p + d + e) and (e.any() and (e + d).any())]
            dist = max(np.mean([(x[tuple(a)] - x[tuple(b)]) ** 2 for a, b in pairs]) - floor, 0.0)
            weights.append([np.exp(-dist / (h * floor)) for h in (0.5, 1.0, 2.0)])
            values.append(x[tuple(p + d)])
            best = min(best, (dist, x[tuple(p + d)]), key=lambda t: t[0])
        w = np.array(weights)
        out[(slice(0, 3),) + tuple(p)] = w.T @ np.array(values) / w.sum(0)
        out[(3,) + tuple(p)] = best[1]
    return out


def test_the_non_local_means_follow_their_definition_and_never_see_the_voxel():
    x = np.random.default_rng(2).uniform(0, 1, (5, 6, 4)).astype(np.float32)
    feats = _blind_nlm(x, 0.2, search=2)
    np.testing.assert_allclose(feats, _blind_nlm_by_definition(x, 0.2, 2), rtol=1e-4, atol=1e-5)
    for p in [(0, 0, 0), (2, 3, 1), (4, 5, 3)]:  # a corner, the middle, the far corner
        y = x.copy()
        y[p] += 5.0
        changed = _blind_nlm(y, 0.2, search=2)
        np.testing.assert_allclose(changed[(slice(None),) + p], feats[(slice(None),) + p], atol=1e-5)
        assert np.abs(changed - feats).max() > 0.1  # others see it


def test_the_non_local_means_in_slabs_are_those_of_the_whole_volume(monkeypatch):
    """Slabs of 2 slices (the last of 1) with their halos give the whole volume's features to the bit."""
    import ldp_med.noise2self as n2s

    x = np.random.default_rng(3).uniform(0, 1, (13, 7, 6)).astype(np.float32)
    whole = n2s._blind_nlm_block(x, 0.2, 2)
    monkeypatch.setattr(n2s, "_SLAB_VOXELS", 2 * 7 * 6)
    np.testing.assert_array_equal(_blind_nlm(x, 0.2, search=2), whole)
    monkeypatch.setattr(n2s, "_SLAB_VOXELS", 1)  # one slice a slab
    np.testing.assert_array_equal(_blind_nlm(x, 0.2, search=2), whole)


def test_the_voxel_comes_back_where_the_net_is_unsure_or_its_residual_is_more_than_noise():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (9, 10, 11)).astype(np.float32)
    near = x - 0.02 * rng.standard_normal(x.shape).astype(np.float32)  # a residual under the noise
    est, var = _posterior(x, near, np.full_like(x, 1e4), 0.05, 1.0)  # the net knows nothing: the voxel, the noise
    np.testing.assert_allclose(est, x, atol=1e-5)
    np.testing.assert_allclose(var, 0.05**2, rtol=1e-5)
    est, var = _posterior(x, near, np.full_like(x, 0.05**2), 0.05, 1.0)  # as sure as the noise: halfway
    np.testing.assert_allclose(est, (x + near) / 2, atol=1e-6)
    np.testing.assert_allclose(var, 0.05**2 / 2, rtol=1e-5)
    est, var = _posterior(x, near, np.zeros_like(x), 0.05, 1.0)  # certain: its mean, no error
    np.testing.assert_array_equal(est, near)
    assert np.all(var == 0)
    est, var = _posterior(x, x - 0.3, np.zeros_like(x), 0.05, 1.0)  # certain, but a residual of 6 sigma: it is wrong
    w = 1 - 0.05**2 / 0.3**2
    np.testing.assert_allclose(est, x - 0.3 * (1 - w), atol=1e-5)
    np.testing.assert_allclose(var, w * 0.05**2, rtol=1e-4)


def test_the_residual_window_grows_where_the_residual_is_noise_and_stays_small_at_a_thin_structure():
    """A sure net that predicts a flat background and misses a line one voxel wide (6 sigma): with the intervals'
    rule (z = 1) the noise far from the line is kept by chance less than half as much as with 3x3x3 everywhere
    (z = 0), and the line is kept as well as 3x3x3 keeps it (a fixed 7x7x7 window would dilute it: z = 3 does)."""
    rng = np.random.default_rng(4)
    clean = np.zeros((24, 25, 26), np.float32)
    clean[12, 12, :] = 6 * SIGMA
    x = (clean + SIGMA * rng.standard_normal(clean.shape)).astype(np.float32)
    mu, s2 = np.zeros_like(x), np.zeros_like(x)
    line = clean > 0
    away = ndimage.distance_transform_edt(~line) > 4
    err = lambda est, where: float(np.mean((est - clean)[where] ** 2))  # noqa: E731
    fixed, grown, wide = (_posterior(x, mu, s2, SIGMA, z)[0] for z in (0.0, 1.0, 3.0))
    assert err(grown, away) < 0.5 * err(fixed, away)
    assert err(grown, line) <= 1.05 * err(fixed, line) < 0.1 * err(mu, line)
    assert err(wide, line) > 2 * err(fixed, line)


def test_its_error_variance_is_larger_where_its_error_is_and_about_its_size(pair):
    """``return_variance``: the variance ranks the error above chance (a map unrelated to it: 0 +- 0.006 over these
    24 k voxels; it gives 0.046 since the grown residual window, 0.11 with 3x3x3, whose chance-kept noise it flagged),
    lies within [0, sigma^2] and its mean is within 25% of the mean squared error (1.00; 1.11 with 3x3x3)."""
    from scipy.stats import spearmanr

    clean, noisy = pair
    out, var = noise2self_denoise(noisy, SIGMA, steps=300, return_variance=True)
    np.testing.assert_array_equal(out, noise2self_denoise(noisy, SIGMA, steps=300))
    assert var.min() >= 0 and var.max() <= SIGMA**2 * 1.0001
    assert spearmanr(ndimage.gaussian_filter(var, 1).ravel(), np.abs(out - clean).ravel()).statistic > 0.03
    assert 0.8 < var.mean() / np.mean((out - clean) ** 2) < 1.25


def test_same_seed_same_result_other_seed_other(pair):
    _, noisy = pair
    a, b = (noise2self_denoise(noisy, SIGMA, steps=30, seed=1) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, noise2self_denoise(noisy, SIGMA, steps=30, seed=2))


def test_config_rejects_empty_settings():
    with pytest.raises(ConfigError, match="noise2self_steps"):
        BaselineConfig(noise2self_steps=0)
    with pytest.raises(ConfigError, match="noise2self_residual_z"):
        BaselineConfig(noise2self_residual_z=-1.0)


def test_cli_denoises_with_it_and_keeps_the_geometry(tmp_path, phantom_nifti):
    """`ldp-med reconstruct --task denoise --method noise2self`: inside the phantom (its air keeps the Rician floor, as
    every denoiser's does) closer to it than the noisy input; the same affine."""
    import nibabel as nib
    from click.testing import CliRunner

    from ldp_med.cli import cli

    noisy, out = tmp_path / "noisy.nii.gz", tmp_path / "n2s.nii.gz"
    run = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731
    assert run("simulate", phantom_nifti, "-o", noisy, "--task", "denoise", "--seed", 2).exit_code == 0
    r = run("reconstruct", noisy, "-o", out, "--task", "denoise", "--method", "noise2self", "--set", "baseline.noise2self_steps=200")
    assert r.exit_code == 0, r.output
    ref, y, den = (nib.load(str(p)) for p in (phantom_nifti, noisy, out))
    np.testing.assert_allclose(den.affine, ref.affine, atol=1e-5)
    inside = ref.get_fdata() > 0
    err = lambda img: float(np.mean((img.get_fdata() - ref.get_fdata())[inside] ** 2))  # noqa: E731
    assert err(den) < 0.8 * err(y)  # a 21x24x19 phantom of flat ellipsoids: mostly edges for its 7.6k voxels
