"""The k-space HDF5 container: multi-coil Cartesian k-space, sampling mask, and optional extras.

Layout of the file (all datasets at the root; see docs/formats.md)::

    kspace            complex64 (coils, X, Y, Z)  centred orthonormal FFT of S * x, zeros where unsampled
    mask              uint8     broadcastable to (X, Y, Z), typically (1, Y, Z); 1 = sampled
    sensitivity_maps  complex64 (coils, X, Y, Z)  optional
    reference         float32   (X, Y, Z)         optional: clean magnitude / scale
    affine            float64   (4, 4)            voxel index -> RAS+ mm of the image grid
    attributes        task, acceleration, mask_kind, noise_std, seed, scale, ldp_med_version, ...

Complex data is stored as HDF5 compound (r, i) members, h5py's native complex layout.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ldp_med.errors import InputError
from ldp_med.io.atomic import atomic_open
from ldp_med.io.volume import MIN_SIZE

__all__ = ["KSpaceData", "load_kspace", "save_kspace", "ATTR_DEFAULTS"]

# Defaults for missing attributes; acceleration, when missing, is computed from the mask.
ATTR_DEFAULTS = {
    "task": "kspace",
    "acceleration": None,
    "mask_kind": "unknown",
    "noise_std": None,
    "seed": None,
    "scale": 1.0,
    "ldp_med_version": "unknown",
}
_DATASETS = ("kspace", "mask", "sensitivity_maps", "reference", "affine")


@dataclass
class KSpaceData:
    """Measurements of one multi-coil Cartesian acquisition, and what is known about them.

    Attributes:
        kspace: complex64 (coils, X, Y, Z); readout along X (fully sampled), phase encodes Y, Z.
        mask: uint8 of 0/1, broadcastable to (X, Y, Z), typically (1, Y, Z).
        sensitivity_maps: complex64 (coils, X, Y, Z), or None.
        reference: float32 (X, Y, Z) clean magnitude divided by ``attrs["scale"]``, or None.
        affine: float64 (4, 4), voxel index -> RAS+ mm of the image grid.
        attrs: ``task`` (str), ``acceleration`` (float, realised), ``mask_kind`` (str),
            ``noise_std`` (float or None: std of the real and of the imaginary part of a sample),
            ``seed`` (int or None), ``scale`` (float), ``ldp_med_version`` (str); more are kept.
    """

    kspace: np.ndarray
    mask: np.ndarray
    sensitivity_maps: np.ndarray | None = None
    reference: np.ndarray | None = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    attrs: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The image grid (X, Y, Z)."""
        return tuple(self.kspace.shape[1:])

    @property
    def n_coils(self) -> int:
        return int(self.kspace.shape[0])

    def validate(self, path: str | os.PathLike | None = None) -> KSpaceData:
        """Check every field, normalise dtypes and fill attribute defaults, in place.

        complex128 arrays become complex64, a bool mask becomes uint8, the reference becomes
        float32, the affine float64, and missing attributes get :data:`ATTR_DEFAULTS`
        (``acceleration`` computed from the mask).

        Args:
            path: the file being read or written, named in errors.

        Returns:
            self, for chaining.

        Raises:
            InputError: naming ``path`` and the offending field.
        """
        self.kspace = _check_nonzero(_check_complex(self.kspace, "kspace", path), "kspace", path)
        grid = self.kspace.shape[1:]
        self.mask = _check_mask(self.mask, grid, path)
        if self.sensitivity_maps is not None:
            self.sensitivity_maps = _check_complex(self.sensitivity_maps, "sensitivity_maps", path)
            if self.sensitivity_maps.shape != self.kspace.shape:
                raise InputError(path, f"sensitivity_maps shape {self.sensitivity_maps.shape} differs "
                                       f"from kspace shape {self.kspace.shape}")
            _check_nonzero(self.sensitivity_maps, "sensitivity_maps", path)
        if self.reference is not None:
            self.reference = _check_reference(self.reference, grid, path)
        self.affine = _check_affine(self.affine, path)
        self.attrs = _check_attrs(self.attrs, self.mask, grid, path)
        return self


def _check_finite(array: np.ndarray, name: str, path) -> None:
    bad = array.size - int(np.isfinite(array).sum())
    if bad:
        raise InputError(path, f"{name} has {bad} NaN/Inf values out of {array.size}")


def _check_complex(array, name: str, path) -> np.ndarray:
    """complex64 (coils, X, Y, Z) with no NaN/Inf; complex128 is cast."""
    array = np.asarray(array)
    if not np.iscomplexobj(array):
        hint = " (a trailing axis of 2 for real/imaginary is not accepted)" if array.shape[-1:] == (2,) else ""
        raise InputError(path, f"{name} is {array.dtype} with shape {array.shape}; expected complex64 "
                               f"(coils, X, Y, Z) stored as HDF5 complex (compound r, i){hint}")
    if array.ndim != 4:
        raise InputError(path, f"{name} must be 4-D (coils, X, Y, Z), got shape {array.shape}")
    if 0 in array.shape:
        raise InputError(path, f"{name} has an empty dimension: shape {array.shape}")
    array = array.astype(np.complex64, copy=False)
    _check_finite(array, name, path)
    return array


def _check_nonzero(array: np.ndarray, name: str, path) -> np.ndarray:
    """A measurement (or coil map) that is zero everywhere carries no image."""
    if not array.any():
        raise InputError(path, f"{name} is zero everywhere; there is nothing to reconstruct")
    return array


def _check_mask(mask, grid: tuple[int, ...], path) -> np.ndarray:
    """uint8 0/1 mask broadcastable to ``grid`` (X, Y, Z), sampling at least one point."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ and mask.dtype != np.uint8:
        raise InputError(path, f"mask is {mask.dtype}; expected uint8 or bool")
    try:
        ok = mask.ndim <= 3 and np.broadcast_shapes(mask.shape, grid) == tuple(grid)
    except ValueError:
        ok = False
    if not ok:
        raise InputError(path, f"mask shape {mask.shape} does not broadcast to the k-space grid {tuple(grid)}")
    mask = mask.astype(np.uint8, copy=False)
    if mask.max(initial=0) > 1:
        raise InputError(path, "mask values must be 0 or 1")
    if not mask.any():
        raise InputError(path, "mask samples no k-space point")
    return mask


def _check_reference(reference, grid: tuple[int, ...], path) -> np.ndarray:
    reference = np.asarray(reference)
    if np.iscomplexobj(reference) or not np.issubdtype(reference.dtype, np.number):
        raise InputError(path, f"reference is {reference.dtype}; expected real float32 magnitude")
    if reference.shape != tuple(grid):
        raise InputError(path, f"reference shape {reference.shape} differs from the k-space grid {tuple(grid)}")
    reference = reference.astype(np.float32, copy=False)
    _check_finite(reference, "reference", path)
    return reference


def _check_affine(affine, path) -> np.ndarray:
    affine = np.asarray(affine)
    if affine.shape != (4, 4) or not np.issubdtype(affine.dtype, np.number) or np.iscomplexobj(affine):
        raise InputError(path, f"affine must be a real (4, 4) array, got {affine.dtype} {affine.shape}")
    affine = affine.astype(np.float64, copy=False)
    _check_finite(affine, "affine", path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "affine is singular (a voxel size is zero or two axes coincide)")
    return affine


def _realised_acceleration(mask: np.ndarray, grid: tuple[int, ...]) -> float:
    full = np.broadcast_to(mask, grid)
    return float(full.size / full.sum())


def _check_attrs(attrs: dict, mask: np.ndarray, grid: tuple[int, ...], path) -> dict:
    """Fill defaults and type-check the known attributes; unknown ones are kept as they are."""
    out = {**ATTR_DEFAULTS, **{k: v for k, v in dict(attrs).items() if v is not None}}
    if out["acceleration"] is None:
        out["acceleration"] = _realised_acceleration(mask, grid)
    for key in ("task", "mask_kind", "ldp_med_version"):
        out[key] = str(out[key])
    for key, positive in (("acceleration", True), ("scale", True), ("noise_std", False)):
        if out[key] is None:
            continue
        try:
            value = float(out[key])
        except (TypeError, ValueError):
            raise InputError(path, f"attribute {key} must be a number, got {out[key]!r}") from None
        if not np.isfinite(value) or value < 0 or (positive and value == 0):
            raise InputError(path, f"attribute {key} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
        out[key] = value
    if out["seed"] is not None:
        out["seed"] = _integer_attr(out, "seed", path)
    if out.get("calib") is not None:
        calib = _integer_attr(out, "calib", path)
        if not 0 <= calib <= max(grid[1:]):
            raise InputError(path, f"attribute calib = {calib} must be from 0 to {max(grid[1:])} "
                                   f"(the phase-encode grid is {grid[1]}x{grid[2]})")
        out["calib"] = calib
    return out


def _integer_attr(attrs: dict, key: str, path) -> int:
    """``attrs[key]`` as an int; a float with a fraction, NaN, text or an array is an InputError."""
    value = attrs[key]
    try:
        number = float(value)
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError, OverflowError):
        pass
    raise InputError(path, f"attribute {key} must be an integer, got {value!r}")


def _attr_to_python(value):
    """h5py attribute values (numpy scalars, bytes, arrays) as plain Python values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _read_dataset(f: h5py.File, name: str, path: Path, required: bool) -> np.ndarray | None:
    if name not in f:
        if required:
            raise InputError(path, f"dataset '{name}' missing (found: {sorted(f.keys())})")
        return None
    node = f[name]
    if not isinstance(node, h5py.Dataset):
        raise InputError(path, f"'{name}' is an HDF5 group, expected a dataset")
    try:
        return node[()]
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(path, f"cannot read dataset '{name}' ({' '.join(str(exc).split())})") from None


def load_kspace(path: str | os.PathLike, min_size: int = MIN_SIZE) -> KSpaceData:
    """Read and validate a k-space container written by :func:`save_kspace` (or compatible).

    Args:
        path: an HDF5 file (``.h5``/``.hdf5``).
        min_size: fewest samples along each axis of the grid (X, Y, Z), as for volumes.

    Returns:
        A validated KSpaceData (dtypes normalised, attribute defaults filled; a missing
        ``affine`` dataset gives the identity).

    Raises:
        InputError: naming the file: missing, a folder, not HDF5, a missing or malformed dataset,
            shapes that disagree, real-valued k-space, NaN/Inf, k-space or coil maps that are zero
            everywhere, a singular affine, a grid smaller than ``min_size``, or a bad attribute.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected an HDF5 k-space file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError:
        is_hdf5 = False
    if not is_hdf5:
        raise InputError(path, "not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            arrays = {name: _read_dataset(f, name, path, name in ("kspace", "mask")) for name in _DATASETS}
            attrs = {k: _attr_to_python(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise InputError(path, f"unreadable HDF5 file ({' '.join(str(exc).split())})") from None
    affine = arrays.pop("affine")
    data = KSpaceData(**arrays, affine=np.eye(4) if affine is None else affine, attrs=attrs).validate(path)
    if min(data.shape) < min_size:
        raise InputError(path, f"k-space grid too small ({'x'.join(map(str, data.shape))}) for ldp-med: every axis "
                               f"needs at least {min_size} samples")
    return data


def save_kspace(data: KSpaceData, path: str | os.PathLike, force: bool = False) -> Path:
    """Validate ``data`` and write it atomically as an HDF5 k-space container.

    The ``ldp_med_version`` attribute is set to the writing package's version; attributes
    that are None are not written (a missing attribute reads back as None or its default).

    Args:
        data: the container; a copy is validated and normalised, ``data`` itself is not changed.
        path: destination (``.h5`` or ``.hdf5``).
        force: overwrite an existing file.

    Returns:
        The destination path.

    Raises:
        InputError: naming ``path`` for invalid data, an existing file without ``force``, or
            an attribute HDF5 cannot store.
    """
    from ldp_med import __version__

    path = Path(path)
    data = dataclasses.replace(data, attrs=dict(data.attrs)).validate(path)
    attrs = {**data.attrs, "ldp_med_version": __version__}
    with atomic_open(path, force) as fh, h5py.File(fh, "w") as f:
        f.create_dataset("kspace", data=data.kspace)
        f.create_dataset("mask", data=data.mask, compression="gzip")
        if data.sensitivity_maps is not None:
            f.create_dataset("sensitivity_maps", data=data.sensitivity_maps)
        if data.reference is not None:
            f.create_dataset("reference", data=data.reference)
        f.create_dataset("affine", data=data.affine)
        for key, value in attrs.items():
            if value is None:
                continue
            try:
                f.attrs[key] = value
            except (TypeError, ValueError) as exc:
                raise InputError(path, f"attribute {key}={value!r} cannot be stored in HDF5 ({exc})") from None
    return path
