"""Shared fixtures: a small odd-sized phantom written as NIfTI, seeded everything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ODD_SHAPE = (21, 24, 19)


def ellipsoid_phantom(shape=ODD_SHAPE) -> np.ndarray:
    """A brain-like phantom: a bright ellipsoid with darker inner ellipsoids, float32 in [0, 1]."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    x, y, z = grids
    vol = np.zeros(shape, np.float32)
    for (cx, cy, cz, rx, ry, rz, val) in [
        (0, 0, 0, 0.8, 0.85, 0.75, 0.6),
        (0, 0, 0, 0.7, 0.75, 0.65, 0.3),
        (-0.25, 0.1, 0, 0.15, 0.35, 0.3, -0.6),
        (0.25, 0.1, 0, 0.15, 0.35, 0.3, -0.6),
        (0.0, -0.4, 0.2, 0.2, 0.15, 0.15, 0.4),
        (0.3, 0.45, -0.3, 0.08, 0.1, 0.1, 0.5),
    ]:
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1
        vol[inside] += val
    return np.clip(vol, 0, None).astype(np.float32)


def oblique_affine() -> np.ndarray:
    """An anisotropic, slightly rotated voxel-to-RAS affine."""
    c, s = np.cos(0.1), np.sin(0.1)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5, 1.2, 2.0])
    aff[:3, 3] = [-15.0, -14.0, -18.0]
    return aff


# Tiny convolutions run faster on one thread, and two threads crawl when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def phantom_nifti(tmp_path):
    """Path of the phantom (scaled to 0..200, like scanner units) saved as NIfTI with an oblique affine."""
    import nibabel as nib

    path = tmp_path / "phantom.nii.gz"
    img = nib.Nifti1Image(ellipsoid_phantom() * 200.0, oblique_affine())
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=1)
    nib.save(img, str(path))
    return path
