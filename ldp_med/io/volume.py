"""The in-memory volume type shared by every loader, and the checks applied where data enters.

A :class:`Volume` is a 3-D float32 array plus the affine that maps voxel indices to world
coordinates in millimetres, in the NIfTI convention RAS+: +x points to the patient's Right,
+y to Anterior, +z to Superior (DICOM's LPS+ is converted on load).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ldp_med.errors import InputError

__all__ = ["Volume", "check_volume_array", "check_affine", "check_volume_content", "reorient", "MIN_SIZE"]

#: Fewest voxels along any axis of an input volume: the 7-voxel window of 3-D SSIM, and enough for the
#: noise estimators, denoisers and slice-thickness models to be defined without warnings.
MIN_SIZE = 7


@dataclass
class Volume:
    """A 3-D scalar volume on a grid placed in world space.

    Attributes:
        data: float32 array of shape (X, Y, Z); array axis ``i`` is voxel axis ``i`` of ``affine``.
        affine: float64 array of shape (4, 4) mapping a voxel index ``(i, j, k, 1)`` to RAS+
            world coordinates in mm (NIfTI convention; DICOM's LPS is converted on load).
        meta: free-form metadata, e.g. ``source`` (the file it came from), ``format``,
            ``qform``/``qform_code``/``sform``/``sform_code``/``zooms`` (NIfTI) or
            ``series_instance_uid``/``modality``/``series_description`` (DICOM).

    Real numeric data is cast to float32 and the affine to float64 on construction; the content
    is not checked here (use :func:`check_volume_array`, which every loader calls).
    """

    data: np.ndarray
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.dtype != np.float32 and (
            np.issubdtype(data.dtype, np.integer)
            or np.issubdtype(data.dtype, np.floating)
            or data.dtype == np.bool_
        ):
            data = data.astype(np.float32)
        self.data = data
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must have shape (4, 4), got {affine.shape}")
        self.affine = affine

    @property
    def shape(self) -> tuple[int, ...]:
        """The array shape (X, Y, Z)."""
        return tuple(self.data.shape)

    @property
    def voxel_sizes(self) -> np.ndarray:
        """Voxel sizes in mm: float64 array of shape (3,), the norms of the affine's first 3 columns."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def check_volume_array(data: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    """Check that ``data`` is a usable 3-D scalar volume and return it as float32.

    Args:
        data: array of any dtype; expected real numeric (bool, integer or floating), shape (X, Y, Z).
        path: the file the data came from (or is going to), named in the error.

    Returns:
        The data as a float32 array of shape (X, Y, Z) (no copy when it already is float32).

    Raises:
        InputError: for complex or non-numeric dtypes, a number of dimensions other than 3,
            a dimension of size 0, or NaN/Inf values (the message says how many).
    """
    data = np.asarray(data)
    if np.iscomplexobj(data):
        raise InputError(path, f"complex data ({data.dtype}); expected a real-valued (magnitude) volume")
    if not (
        np.issubdtype(data.dtype, np.integer)
        or np.issubdtype(data.dtype, np.floating)
        or data.dtype == np.bool_
    ):
        raise InputError(path, f"non-numeric data type {data.dtype}; expected a real numeric volume")
    if data.ndim != 3:
        raise InputError(path, f"expected 3-D data (X, Y, Z), got {data.ndim}-D with shape {data.shape}")
    if 0 in data.shape:
        raise InputError(path, f"empty data: shape {data.shape} has a dimension of size 0")
    data = data.astype(np.float32, copy=False)
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(data.size - finite.sum()) - n_nan
        raise InputError(path, f"{n_nan} NaN and {n_inf} Inf values out of {data.size} voxels")
    return data


def check_affine(affine: np.ndarray, path: str | os.PathLike | None) -> np.ndarray:
    """Check that ``affine`` is a finite, invertible voxel-to-world matrix and return it as float64.

    Args:
        affine: array of shape (4, 4).
        path: the file the affine came from (or is going to), named in the error.

    Raises:
        InputError: for a wrong shape, NaN/Inf entries, or a singular 3x3 part (zero voxel size).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(path, f"affine must have shape (4, 4), got {affine.shape}")
    if not np.isfinite(affine).all():
        raise InputError(path, "affine has NaN or Inf entries")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "affine is singular (a voxel size is zero or two axes coincide)")
    return affine


def check_volume_content(volume: Volume, path: str | os.PathLike | None, min_size: int = MIN_SIZE) -> Volume:
    """Check that a loaded volume is something ldp-med can work on: large enough, and not constant.

    Args:
        volume: a volume whose array already passed :func:`check_volume_array`.
        path: the file or folder it came from, named in the error.
        min_size: fewest voxels along every axis (1 allows single slices).

    Returns:
        ``volume``, unchanged.

    Raises:
        InputError: for an axis shorter than ``min_size`` ("volume too small (2x2x2) ...") or a
            volume whose voxels all hold one value ("constant intensity ...").
    """
    shape = volume.shape
    if min(shape) < min_size:
        raise InputError(path, f"volume too small ({'x'.join(map(str, shape))}) for ldp-med: every axis needs "
                               f"at least {min_size} voxels")
    data = volume.data
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise InputError(path, f"constant intensity (every voxel is {low:g}): nothing to simulate, reconstruct "
                               "or compare")
    return volume


def reorient(data: np.ndarray, affine: np.ndarray, like: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``data`` with its axes permuted and flipped into the voxel order closest to ``like``'s (RAS+ for None), and
    the affine that goes with it: the same voxels in the same places, stored another way (no resampling). An LIA
    MGZ against a RAS NIfTI, a DICOM's (column, row, slice) order against a RAS display."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    ornt = ornt_transform(io_orientation(affine), io_orientation(np.eye(4) if like is None else like))
    return apply_orientation(data, ornt), np.asarray(affine, np.float64) @ inv_ornt_aff(ornt, np.shape(data))
