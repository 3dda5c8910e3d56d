"""PNG reports: orthogonal central slices of several volumes side by side."""

from __future__ import annotations

import os

import numpy as np

from ldp_med.io.atomic import atomic_open
from ldp_med.io.volume import reorient


def as_ras(vol: np.ndarray, affine: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``vol``'s axes permuted and flipped to the closest RAS+ order (no resampling) and its voxel sizes in that
    order; ``affine`` None: the array is taken as RAS with 1 mm voxels."""
    if affine is None:
        return vol, np.ones(3)
    ras, ras_affine = reorient(vol, affine)
    return ras, np.linalg.norm(ras_affine[:3, :3], axis=0)


def orthogonal_slices(vol: np.ndarray, affine: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
    """Central sagittal, coronal and axial slices of an (X, Y, Z) volume whose voxel-to-world map is ``affine``
    (None: a RAS array), each rotated for display (superior / anterior up, the patient's right on the right) with
    its pixel aspect (height / width in mm), so any storage order (LIA, LPS, oblique) and thick slices look the same."""
    ras, (dx, dy, dz) = as_ras(vol, affine)
    x, y, z = (n // 2 for n in ras.shape)
    return [(np.rot90(ras[x, :, :]), dz / dy), (np.rot90(ras[:, y, :]), dz / dx), (np.rot90(ras[:, :, z]), dy / dx)]


def save_slices_png(
    path: str | os.PathLike, volumes: dict[str, np.ndarray], force: bool = False,
    scales: dict[str, tuple[float, float]] | None = None, title: str | None = None,
    affine: np.ndarray | None = None,
) -> None:
    """Write a grid PNG: one row per volume (named by its key), three orthogonal slices per row.

    Args:
        volumes: name -> (X, Y, Z) magnitude array; rows appear in insertion order.
        scales: optional name -> (vmin, vmax); default 0 .. the 99.5th percentile of each volume.
        affine: the volumes' voxel-to-RAS map: slices are shown in anatomical orientation with true proportions
            (:func:`orthogonal_slices`); None takes the arrays as RAS with cubic voxels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = scales or {}
    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False, layout="constrained")  # keeps the title clear
    for row, (name, vol) in enumerate(volumes.items()):
        vmin, vmax = scales.get(name, (0.0, float(np.percentile(vol, 99.5)) or 1.0))
        for col, (sl, aspect) in enumerate(orthogonal_slices(np.asarray(vol, np.float32), affine)):
            ax = axes[row, col]
            ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    with atomic_open(path, force) as fh:
        fig.savefig(fh, dpi=80, format="png")
    plt.close(fig)
