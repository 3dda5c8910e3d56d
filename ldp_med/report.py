"""PNG reports: orthogonal central slices of several volumes side by side."""

from __future__ import annotations

import os

import numpy as np

from ldp_med.io.atomic import atomic_open


def orthogonal_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Central sagittal/coronal/axial slices of an (X, Y, Z) volume, rotated for display (RAS arrays)."""
    x, y, z = (n // 2 for n in vol.shape)
    return [np.rot90(vol[x, :, :]), np.rot90(vol[:, y, :]), np.rot90(vol[:, :, z])]


def save_slices_png(
    path: str | os.PathLike, volumes: dict[str, np.ndarray], force: bool = False,
    scales: dict[str, tuple[float, float]] | None = None, title: str | None = None,
) -> None:
    """Write a grid PNG: one row per volume (named by its key), three orthogonal slices per row.

    Args:
        volumes: name -> (X, Y, Z) magnitude array; rows appear in insertion order.
        scales: optional name -> (vmin, vmax); default 0 .. the 99.5th percentile of each volume.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = scales or {}
    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False, layout="constrained")  # keeps the title clear
    for row, (name, vol) in enumerate(volumes.items()):
        vmin, vmax = scales.get(name, (0.0, float(np.percentile(vol, 99.5)) or 1.0))
        for col, sl in enumerate(orthogonal_slices(np.asarray(vol, np.float32))):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    with atomic_open(path, force) as fh:
        fig.savefig(fh, dpi=80, format="png")
    plt.close(fig)
