"""FreeSurfer MGH/MGZ reading and writing via nibabel (``orig.mgz``, ``T1.mgz``, ``brain.mgz`` ...).

MGH stores its geometry as voxel sizes (``delta``), direction cosines (``Mdc``) and the world position of the
grid's centre (``Pxyz_c``), all float32; reading keeps them in ``Volume.meta["mgh"]`` with the scan parameters
of the footer (TR, flip angle, TE, TI, field of view), so ``save_mgh(load_mgh(p), q)`` writes the same header
fields and data. The raw header is checked before nibabel reads it, as for NIfTI.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.freesurfer.mghformat import MGHHeader, data_type_codes

from ldp_med.errors import InputError, one_line
from ldp_med.io.atomic import atomic_open
from ldp_med.io.guard import READ_ERRORS, check_data_fits, check_input_file, quiet, read_volume_array
from ldp_med.io.volume import Volume, check_affine, check_volume_array

__all__ = ["load_mgh", "save_mgh", "is_mgh_path"]

#: the header's fields (version, dims, type, dof, goodRASFlag, delta, Mdc, Pxyz_c): the first 90 of the 284 bytes
#: before the data
_HEADER = MGHHeader._hdrdtype
_DATA_OFFSET = 284
_GEOMETRY = ("delta", "Mdc", "Pxyz_c")
_SCAN = ("tr", "flip_angle", "te", "ti", "fov")
#: FreeSurfer's direction cosines for a header without its geometry flag (rows: where the voxel axes x, y, z point):
#: coronal slices, LIA, as mri_info reports such a file. nibabel's default has the y and z rows the other way round.
_FREESURFER_DEFAULT_MDC = ((-1.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))


def is_mgh_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.mgh`` or ``.mgz`` (case-insensitive)."""
    return Path(path).name.lower().endswith((".mgh", ".mgz"))


def _compressed(path: Path) -> bool:
    return path.name.lower().endswith(".mgz")


def _raw_header(path: Path) -> np.ndarray:
    """The 284-byte header as stored, before nibabel sets a default geometry or checks anything."""
    opener = gzip.open if _compressed(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(_HEADER.itemsize)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"not a readable MGH file ({one_line(exc)})") from None
    if len(head) < _HEADER.itemsize:
        raise InputError(path, f"not a readable MGH file (truncated header: {len(head)} of {_HEADER.itemsize} bytes)")
    return np.frombuffer(head, _HEADER)[0]


def _check_header(path: Path) -> bool:
    """Refuse a header nibabel would reject late or read wrongly, and data that cannot be in the file.

    Returns:
        Whether the header says its geometry fields are valid (``goodRASFlag``).
    """
    hdr = _raw_header(path)
    if int(hdr["version"]) != 1:
        raise InputError(path, f"not a readable MGH file (version {int(hdr['version'])}, expected 1)")
    dims = [int(d) for d in hdr["dims"]]
    for i, d in enumerate(dims):
        if d < 1:
            raise InputError(path, f"header dims[{i}] = {d}: every dimension must be at least 1")
    code = int(hdr["type"])
    if code not in data_type_codes.value_set():
        raise InputError(path, f"unsupported MGH data type {code}")
    good = bool(hdr["goodRASFlag"])
    if good:  # without it FreeSurfer uses a default coronal 1 mm geometry
        delta, mdc, centre = (np.asarray(hdr[k], np.float64) for k in _GEOMETRY)
        if not (np.isfinite(delta).all() and (delta > 0).all()):
            raise InputError(path, f"header delta = {delta.tolist()}: voxel sizes must be finite and positive")
        if not (np.isfinite(mdc).all() and np.isfinite(centre).all()):
            raise InputError(path, "header Mdc or Pxyz_c has NaN or Inf entries")
    dtype = np.dtype(data_type_codes.dtype[code])
    needed = _DATA_OFFSET + int(np.prod(dims, dtype=object)) * dtype.itemsize
    check_data_fits(path, needed, f"{'x'.join(map(str, dims))} {dtype.name}")
    return good


def _open_image(path: Path) -> nib.MGHImage:
    check_input_file(path, "an MGH file (.mgh or .mgz)")
    good = _check_header(path)
    try:
        with quiet():
            img = nib.MGHImage.from_filename(path, mmap=False)
    except READ_ERRORS as exc:
        raise InputError(path, f"not a readable MGH file ({one_line(exc)})") from None
    if not good:  # nibabel set 1 mm voxels centred at 0 as FreeSurfer does, with other direction cosines
        img.header["Mdc"] = _FREESURFER_DEFAULT_MDC
    return img


def load_mgh(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Read a FreeSurfer MGH (``.mgh``) or gzip-compressed MGZ (``.mgz``) file as a :class:`Volume`.

    Args:
        path: the file.
        volume_index: which frame of 4-D data to read (0-based); required when there are several.

    Returns:
        A Volume with float32 data of shape (X, Y, Z) and the affine of ``delta``, ``Mdc`` and ``Pxyz_c`` (RAS+
        mm, as nibabel computes it; a header without its geometry flag gets FreeSurfer's default: 1 mm, LIA,
        centred at 0); ``meta`` holds ``mgh`` (those three and the footer's ``tr``, ``flip_angle``, ``te``,
        ``ti``, ``fov``, as lists), ``shape_on_disk``, ``source``, ``format`` = ``"mgh"``, and ``volume_index``
        when one was read from 4-D data.

    Raises:
        InputError: naming the file, for a missing file, a folder, a version other than 1, a dimension < 1, an
            unknown data type, non-finite or non-positive geometry, a header promising more data than the file
            holds (checked before allocating), 4-D data without a (valid) index, NaN/Inf values, or a singular
            affine.
    """
    path = Path(path)
    img = _open_image(path)
    data = check_volume_array(read_volume_array(img, path, volume_index), path)
    hdr = img.header
    affine = check_affine(hdr.get_affine(), path)
    meta = {"source": str(path), "format": "mgh", "shape_on_disk": tuple(int(s) for s in img.shape),
            "mgh": {k: np.asarray(hdr[k], np.float64).tolist() for k in _GEOMETRY + _SCAN}}
    if volume_index is not None and len(img.shape) > 3 and img.shape[3] > 1:
        meta["volume_index"] = int(volume_index)
    return Volume(data=data, affine=affine, meta=meta)


def _write_fields(hdr: MGHHeader, fields: dict) -> None:
    """Set the geometry and scan fields of ``hdr`` from ``meta["mgh"]``'s lists (float32, as MGH stores them)."""
    for k in _GEOMETRY + _SCAN:
        hdr[k] = np.asarray(fields[k], np.float32).reshape(hdr[k].shape)


def _stored_fields(meta: dict, affine: np.ndarray, shape: tuple[int, ...]) -> dict | None:
    """The header fields ``meta["mgh"]`` carries when their geometry still gives ``affine`` on ``shape``."""
    fields = meta.get("mgh")
    if not isinstance(fields, dict) or meta.get("format") != "mgh":
        return None
    hdr = MGHHeader()
    hdr.set_data_shape(shape)
    try:
        _write_fields(hdr, fields)
    except (KeyError, TypeError, ValueError):
        return None
    return fields if np.allclose(hdr.get_affine(), affine, rtol=0, atol=1e-4) else None


def save_mgh(volume: Volume, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``volume`` as a float32 MGH (``.mgh``) or MGZ (``.mgz``) file, atomically.

    When ``volume.meta["mgh"]`` came from an MGH file and still gives ``volume.affine``, its geometry and scan
    parameters are written as they were, so a loaded file is written back with the same header fields;
    otherwise the geometry is derived from the affine (as FreeSurfer's save_mgh.m does; MGH holds no shear).
    The provenance that NIfTI outputs carry in an extension is not written: MGH has no place for it.

    Args:
        volume: the volume; data of shape (X, Y, Z), all values finite.
        path: destination ending in ``.mgh`` or ``.mgz``.
        force: overwrite an existing file.

    Returns:
        The destination path.

    Raises:
        InputError: naming ``path`` for a bad suffix, an existing file without ``force``, a missing output
            folder, non-3-D or non-finite data, or a singular affine.
    """
    path = Path(path)
    if not is_mgh_path(path):
        raise InputError(path, "output must end in .mgh or .mgz")
    data = check_volume_array(volume.data, path)
    affine = check_affine(volume.affine, path)
    img = nib.MGHImage(data, affine)
    fields = _stored_fields(volume.meta, affine, data.shape)
    if fields is not None:
        _write_fields(img.header, fields)
    buffer = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buffer)})
    raw = buffer.getvalue()
    with atomic_open(path, force) as fh:  # nameless until complete: a kill -9 leaves nothing
        fh.write(gzip.compress(raw, compresslevel=1, mtime=0) if _compressed(path) else raw)
    return path
