"""MINC reading via nibabel: MINC1 (netCDF, ``.mnc`` and ``.mnc.gz``, e.g. BrainWeb's phantoms) and MINC2 (HDF5).

MINC names each array dimension (``xspace``, ``yspace``, ``zspace``, ``time``) and stores it in any order; nibabel
gives the array in the file's order and the affine of its three spatial dimensions in that order, in MINC's world
coordinates, which are RAS+ like NIfTI's. A fourth, non-spatial dimension (``time``) may sit anywhere, usually first:
its volumes are picked with ``volume_index`` along it. Values are the real values (``image-min``/``image-max``
scaling applied by nibabel).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.minc1 import MincError

from ldp_med.errors import InputError, one_line
from ldp_med.io.guard import MAX_DEFLATE_RATIO, READ_ERRORS, check_input_file, gzip_length, quiet, read_volume_array
from ldp_med.io.volume import Volume, check_affine, check_volume_array

__all__ = ["load_minc", "is_minc_path"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NETCDF_MAGIC = b"CDF"


def is_minc_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.mnc`` or ``.mnc.gz`` (case-insensitive)."""
    return Path(path).name.lower().endswith((".mnc", ".mnc.gz"))


def _check_kind(path: Path) -> None:
    """MINC1 (netCDF) or MINC2 (HDF5) by the first bytes; a compressed MINC2, which nibabel cannot open, in one
    line; the whole gzip stream verified first (CRC and length), as for ``.nii.gz``."""
    compressed = path.name.lower().endswith(".gz")
    if compressed:
        gzip_length(path)
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            head = f.read(8)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"not a readable MINC file ({one_line(exc)})") from None
    if head.startswith(_HDF5_MAGIC):
        if compressed:
            raise InputError(path, "a gzip-compressed MINC2 (HDF5) file, which cannot be read compressed: gunzip it")
        return
    if not head.startswith(_NETCDF_MAGIC):
        raise InputError(path, "not a MINC file (neither netCDF (MINC1) nor HDF5 (MINC2))")


def _check_stored(img: nib.Minc2Image, path: Path) -> None:
    """MINC2's data may be compressed inside the HDF5 file, so its size cannot be checked against the file's as for
    NIfTI; but deflate never compresses better than about 1032:1, so a dataset whose stored bytes are fewer than
    that share of its size is fake dimensions (HDF5 would fill the missing chunks, allocating all of it)."""
    dataset = img.dataobj.minc_file._image
    needed = int(np.prod(img.shape, dtype=np.float64)) * img.get_data_dtype().itemsize
    try:
        stored = int(dataset.id.get_storage_size())
    except (OSError, ValueError, AttributeError):
        return
    if needed > stored * MAX_DEFLATE_RATIO + 4096:
        raise InputError(path, f"header promises {'x'.join(map(str, img.shape))} {img.get_data_dtype()} ({needed} "
                               f"bytes) but the file stores {stored} bytes of it: truncated, or wrong dimensions")


def _dimension_names(img) -> list[str]:
    """The file's dimension names in order (nibabel keeps them on its MINC file object, not in its public API); if
    that ever moves, a 3-D file is taken as three spatial dimensions and 4-D data as time first, MINC's usual order."""
    try:
        return [str(n.decode() if isinstance(n, bytes) else n) for n in img.dataobj.minc_file._dim_names]
    except AttributeError:
        spatial = ["zspace", "yspace", "xspace"]
        return {3: spatial, 4: ["time", *spatial]}.get(len(img.shape), [f"dim{i}" for i in range(len(img.shape))])


def load_minc(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Read a MINC1 or MINC2 volume (see the module docstring).

    Args:
        path: ``.mnc`` (MINC1 or MINC2) or ``.mnc.gz`` (MINC1) file.
        volume_index: the volume of 4-D data (0-based), along its non-spatial dimension.

    Returns:
        A Volume: float32 data in the file's dimension order (the non-spatial one taken out), RAS+ affine, ``meta``
        with ``dimensions`` (the file's names, in order), ``shape_on_disk``, ``source``, ``format`` = ``"minc"``
        and ``volume_index`` when one was read.

    Raises:
        InputError: naming the path for a missing or unreadable file, a compressed MINC2, irregular spacing, more
            than one non-spatial dimension or a vector dimension, 4-D data without a (valid) index, NaN/Inf voxels,
            or a singular affine.
    """
    path = Path(path)
    check_input_file(path, "a MINC file")
    _check_kind(path)
    try:
        with quiet():
            img = nib.load(path)
    except (*READ_ERRORS, MincError) as exc:
        raise InputError(path, f"not a readable MINC file ({one_line(exc)})") from None
    if not isinstance(img, (nib.Minc1Image, nib.Minc2Image)):
        raise InputError(path, f"not a MINC file (nibabel reads it as {type(img).__name__})")
    names = _dimension_names(img)
    extra = [i for i, n in enumerate(names) if not n.endswith("space")]
    if "vector_dimension" in names:
        raise InputError(path, "a vector dimension (e.g. RGB); expected a scalar volume")
    if len(extra) > 1:
        raise InputError(path, f"{len(names)}-D data ({', '.join(names)}); expected 3 spatial dimensions and at "
                               "most one other")
    if isinstance(img, nib.Minc2Image):
        _check_stored(img, path)
    data = read_volume_array(img, path, volume_index, volume_axis=extra[0] if extra else None)
    meta = {"dimensions": names, "shape_on_disk": tuple(int(d) for d in img.shape), "source": str(path),
            "format": "minc"}
    if volume_index is not None:
        meta["volume_index"] = int(volume_index)
    return Volume(check_volume_array(data, path), check_affine(np.asarray(img.affine, np.float64), path), meta)
