"""Contrast classifier and MS-SSIM diversity (ldp_med.generation_metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from ldp_med.data.synthetic import CLASSES, TISSUE_INTENSITIES, tissue_maps
from ldp_med.generation_metrics import ContrastClassifier, contrast_features, mean_pairwise_ms_ssim


def _phantom(contrast: str, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    maps = tissue_maps()
    gm, wm, csf = (i + rng.uniform(-0.05, 0.05) for i in TISSUE_INTENSITIES[contrast])
    vol = maps["gm"] * gm + maps["wm"] * wm + maps["csf"] * csf
    return scale * (vol + rng.normal(0, 0.01, vol.shape)).astype(np.float32)


def test_classifier_recognises_unseen_contrasts_and_is_scale_free():
    rng = np.random.default_rng(0)
    train = [(_phantom(c, rng), i) for i in range(len(CLASSES)) for c in [CLASSES[i]] * 3]
    clf = ContrastClassifier(CLASSES).fit([v for v, _ in train], [y for _, y in train])
    test_rng = np.random.default_rng(1)
    pred = clf.predict([_phantom(c, test_rng, scale=0.6) for c in CLASSES])
    assert list(pred) == list(range(len(CLASSES)))


def test_features_reject_other_grids():
    with pytest.raises(ValueError, match="model grid"):
        contrast_features(np.zeros((10, 10, 10)))


def test_ms_ssim_is_one_for_copies_and_drops_with_difference():
    rng = np.random.default_rng(0)
    base = rng.random((64, 66, 63)).astype(np.float32)
    same = mean_pairwise_ms_ssim([base, base.copy(), base.copy()])
    assert same == pytest.approx(1.0, abs=1e-4)
    diverse = mean_pairwise_ms_ssim([base, rng.random(base.shape).astype(np.float32)])
    assert diverse < 0.5
    with pytest.raises(ValueError):
        mean_pairwise_ms_ssim([base])
