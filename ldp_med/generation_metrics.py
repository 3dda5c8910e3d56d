"""Measures of generated volumes: a contrast classifier and pairwise MS-SSIM diversity.

Both work on volumes on the default model grid (the synthetic cohort's MNI-aligned 96x112x96 grid at 2 mm),
where the template's tissue maps say where grey matter, white matter and CSF lie.

- :class:`ContrastClassifier`: tissue-intensity features (median GM, WM and CSF intensity inside
  confident template masks, relative to the brain's 99th percentile, and their log ratios) with a
  multinomial logistic regression (a ``torch.nn.Linear`` fitted by L-BFGS). Subjects are elastically
  deformed, so the masks are conservative (probability >= 0.7) and medians are used.
- :func:`mean_pairwise_ms_ssim`: MONAI's ``MultiScaleSSIMMetric`` over all pairs of a set of volumes;
  4 scales with a 7-voxel kernel (MONAI's 5-scale default needs > 160 voxels per side).
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import torch

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363)  # the first four of Wang et al.'s weights
MS_SSIM_KERNEL = 7


def _masks() -> dict[str, np.ndarray]:
    from ldp_med.data.synthetic import tissue_maps

    maps = tissue_maps()
    return {"gm": maps["gm"] >= 0.7, "wm": maps["wm"] >= 0.7, "csf": maps["csf"] >= 0.7, "brain": maps["mask"] > 0.5}


def contrast_features(volume: np.ndarray, masks: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Six features of a (96, 112, 96) volume: GM, WM, CSF medians / brain p99 and their three log ratios.

    Raises:
        ValueError: the volume is not on the masks' grid.
    """
    masks = masks or _masks()
    v = np.asarray(volume, dtype=np.float32)
    if v.shape != masks["brain"].shape:
        raise ValueError(f"volume shape {v.shape} is not the model grid {masks['brain'].shape}")
    scale = max(float(np.percentile(v[masks["brain"]], 99)), 1e-6)
    gm, wm, csf = (float(np.median(v[masks[k]])) / scale for k in ("gm", "wm", "csf"))
    eps = 1e-3
    return np.array([gm, wm, csf, np.log((wm + eps) / (gm + eps)), np.log((csf + eps) / (gm + eps)),
                     np.log((csf + eps) / (wm + eps))], dtype=np.float32)


class ContrastClassifier:
    """Multinomial logistic regression on :func:`contrast_features` (standardised)."""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = tuple(class_names)
        self._masks = _masks()
        self.linear: torch.nn.Linear | None = None
        self.mean = self.std = None

    def features(self, volumes: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([contrast_features(v, self._masks) for v in volumes]))

    def fit(self, volumes: Sequence[np.ndarray], labels: Sequence[int], l2: float = 1e-3, seed: int = 0) -> "ContrastClassifier":
        x = self.features(volumes)
        y = torch.as_tensor(list(labels), dtype=torch.long)
        self.mean, self.std = x.mean(0), x.std(0).clamp_min(1e-6)
        x = (x - self.mean) / self.std
        torch.manual_seed(seed)
        self.linear = torch.nn.Linear(x.shape[1], len(self.class_names))
        opt = torch.optim.LBFGS(self.linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.linear(x), y) + l2 * self.linear.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return self

    @torch.no_grad()
    def predict(self, volumes: Sequence[np.ndarray]) -> np.ndarray:
        """Class indices of ``volumes``."""
        if self.linear is None:
            raise RuntimeError("fit the classifier first")
        x = (self.features(volumes) - self.mean) / self.std
        return self.linear(x).argmax(1).numpy()


def mean_pairwise_ms_ssim(volumes: Sequence[np.ndarray], data_range: float = 1.0) -> float:
    """Mean MS-SSIM over all pairs of ``volumes`` (each (X, Y, Z), at least 2): lower means more diverse."""
    from monai.metrics import MultiScaleSSIMMetric

    if len(volumes) < 2:
        raise ValueError("need at least two volumes")
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=data_range, kernel_size=MS_SSIM_KERNEL,
                                  weights=MS_SSIM_WEIGHTS)
    vols = [torch.as_tensor(np.asarray(v, dtype=np.float32))[None, None] for v in volumes]
    values = [float(metric(vols[i], vols[j]).mean()) for i, j in combinations(range(len(vols)), 2)]
    return float(np.mean(values))
