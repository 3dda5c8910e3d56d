"""What every nibabel-backed reader (NIfTI, FreeSurfer MGH) checks before it trusts a file, and how it reads
one 3-D volume out of what nibabel opened: library noise muted, the data a header promises measured against
the file before anything is allocated, a volume index for 4-D data."""

from __future__ import annotations

import gzip
import logging
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ldp_med.errors import InputError, one_line

__all__ = ["READ_ERRORS", "MAX_DEFLATE_RATIO", "quiet", "check_input_file", "gzip_length", "check_data_fits",
           "read_volume_array"]

#: Everything nibabel, gzip and the file system raise for unreadable, truncated or fake files.
READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error, OverflowError,
               KeyError, TypeError, IndexError)
MAX_DEFLATE_RATIO = 1032  # deflate never compresses better than about 1032:1


@contextmanager
def quiet():
    """Silence nibabel's header-fix log lines and numpy's warnings: problems become InputErrors instead."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def check_input_file(path: Path, expected: str) -> None:
    """Refuse a missing path or a folder where a file is read (``expected``: what it should be, for the message)."""
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, f"is a folder, expected {expected}")


def gzip_length(path: Path) -> int:
    """Uncompressed length of a gzip file, read through to the end so its CRC and length are verified."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"corrupt or truncated gzip data ({one_line(exc)})") from None
    return total


def check_data_fits(path: Path, needed: int, promised: str) -> None:
    """Refuse a file shorter than the ``needed`` bytes its header promises, before anything is allocated.

    A gzip file (name ending in ``.gz`` or ``.mgz``) is first bounded by the best ratio deflate reaches, then
    read through once, which also verifies its CRC and length.

    Args:
        path: the file.
        needed: bytes of header and data the header promises.
        promised: what the header promises, for the message (e.g. ``"9x12x10 int16"``).
    """
    size, held = path.stat().st_size, "holds"
    if path.name.lower().endswith((".gz", ".mgz")):
        bound = size * MAX_DEFLATE_RATIO + 4096
        size, held = (bound, "can hold at most") if needed > bound else (gzip_length(path), "holds")
    if needed > size:
        raise InputError(path, f"header promises {promised} ({needed} bytes with the header) but the file {held} "
                               f"{size} bytes: truncated, or wrong dimensions/datatype")


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[tuple[int, ...], int]:
    """Split the on-disk shape into the 3-D spatial shape and the number of volumes.

    Trailing singleton dimensions beyond the third are dropped; a 4th dimension > 1 counts the
    volumes; any other extra dimension > 1 is an error.
    """
    trimmed = list(shape)
    while len(trimmed) > 3 and trimmed[-1] == 1:
        trimmed.pop()
    if len(trimmed) <= 3:
        return tuple(trimmed), 0
    if len(trimmed) == 4:
        return tuple(trimmed[:3]), trimmed[3]
    raise InputError(path, f"{len(trimmed)}-D data with shape {tuple(shape)}; expected 3-D or 4-D")


def read_volume_array(img: nib.spatialimages.SpatialImage, path: Path, volume_index: int | None,
                      volume_axis: int | None = None) -> np.ndarray:
    """Read the (scaled) data of one 3-D volume of a nibabel image as float32, shape (X, Y, Z).

    Args:
        img: what nibabel opened (its data not yet read).
        path: the file, named in errors.
        volume_index: the volume of 4-D data (0-based); required when there are several, None or 0 for 3-D.
        volume_axis: the axis of 4-D data that counts the volumes, when it is not the last (MINC's time axis comes
            first); None: the 4th (NIfTI, MGH).

    Raises:
        InputError: 4-D data without a (valid) index, more than 4 dimensions, complex or structured data,
            or data nibabel cannot read (a truncated file).
    """
    if volume_axis is None:
        shape3, n_volumes = _spatial_shape(img.shape, path)
        index = (slice(None),) * 3 + (volume_index,) + (0,) * (len(img.shape) - 4)
    else:
        shape3 = tuple(d for i, d in enumerate(img.shape) if i != volume_axis)
        n_volumes = img.shape[volume_axis] if img.shape[volume_axis] > 1 else 0
        index = tuple(volume_index or 0 if i == volume_axis else slice(None) for i in range(len(img.shape)))
    if volume_index is not None and volume_index < 0:
        raise InputError(path, f"volume index {volume_index} must be >= 0")
    if n_volumes:
        if volume_index is None:
            raise InputError(path, f"4-D data with {n_volumes} volumes; pick one with --volume-index N "
                                   f"(volume_index=N in Python), N from 0 to {n_volumes - 1}")
        if volume_index >= n_volumes:
            raise InputError(
                path, f"volume index {volume_index} out of range for 4-D data with {n_volumes} volumes"
            )
    elif volume_index not in (None, 0):
        raise InputError(path, f"volume index {volume_index} out of range: the data is 3-D (one volume)")
    if n_volumes or volume_axis is not None:
        # Slicing the array proxy applies the header's scaling exactly like get_fdata.
        getter = lambda: np.asarray(img.dataobj[index], dtype=np.float32)  # noqa: E731
    else:
        getter = lambda: img.get_fdata(dtype=np.float32)  # noqa: E731
    dtype = img.get_data_dtype()
    if np.issubdtype(dtype, np.complexfloating):
        raise InputError(path, f"complex data ({dtype}); expected a real-valued (magnitude) volume")
    if dtype.fields is not None:
        raise InputError(path, f"non-numeric data type {dtype} (e.g. RGB); expected a scalar volume")
    try:
        with quiet():
            data = getter()
    except READ_ERRORS as exc:
        raise InputError(path, f"cannot read the image data, the file may be truncated ({one_line(exc)})") from None
    return data.reshape(shape3) if len(shape3) == 3 else data
