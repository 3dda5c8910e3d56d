"""NIfTI-1/2 reading and NIfTI-1 writing via nibabel, with exact header geometry round trips.

Reading keeps the header's qform and sform (and their codes) in ``Volume.meta`` so that
``save_nifti(load_nifti(p), q)`` writes the same geometry: identical affine, codes and zooms.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ldp_med.errors import InputError, one_line
from ldp_med.io.atomic import atomic_open
from ldp_med.io.guard import READ_ERRORS, check_data_fits, check_input_file, quiet, read_volume_array
from ldp_med.io.volume import Volume, check_affine, check_volume_array

__all__ = ["load_nifti", "save_nifti", "is_nifti_path"]

_SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT
_HEADER_SIZES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_XFORM_CODES = range(0, 6)  # unknown, scanner, aligned, Talairach, MNI, template
#: ``meta`` keys (prefixes) written into the JSON comment extension: the aligned placement, the settings' regimes,
#: the classical method an image task's prior was blended with
PROVENANCE = ("align_", "regimes", "classical")


_PAIR_SUFFIXES = (".hdr", ".img", ".hdr.gz", ".img.gz")  # a NIfTI pair: header and data in two files (read only)


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``, or names one file of a ``.hdr``/``.img`` pair
    (also gzip-compressed; case-insensitive)."""
    name = Path(path).name.lower()
    return name.endswith((".nii", ".nii.gz")) or _is_pair(path)


def _is_pair(path: str | os.PathLike) -> bool:
    return Path(path).name.lower().endswith(_PAIR_SUFFIXES)


def _pair_files(path: Path) -> tuple[Path, Path]:
    """(header file, data file) of the pair ``path`` names (either one, the case of its suffix kept)."""
    name = path.name
    gz = name.lower().endswith(".gz")
    stem, suffix = (name[:-7], name[-7:-3]) if gz else (name[:-4], name[-4:])
    swap = {".hdr": ".img", ".img": ".hdr", ".HDR": ".IMG", ".IMG": ".HDR"}.get(suffix, ".img")
    other = path.with_name(stem + swap + (name[-3:] if gz else ""))
    header, data = (path, other) if suffix.lower() == ".hdr" else (other, path)
    for file in (header, data):
        if not file.is_file():
            raise InputError(path, f"{file.name}, the other file of this NIfTI pair, is missing")
    return header, data


def _raw_header(path: Path) -> nib.Nifti1Header:
    """The header as stored (before nibabel fixes anything), NIfTI-1 or NIfTI-2, either byte order."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(path, f"not a readable NIfTI file ({one_line(exc)})") from None
    for size, klass in _HEADER_SIZES.items():
        for endian in "<>":
            if len(head) >= 4 and int(np.frombuffer(head[:4], f"{endian}i4")[0]) == size:
                if len(head) < size:
                    raise InputError(path, f"not a readable NIfTI file (truncated header: {len(head)} of {size} bytes)")
                return klass(head[:size], endianness=endian, check=False)
    found = f"{len(head)} bytes" if len(head) < 4 else "sizeof_hdr is not 348 or 540"
    raise InputError(path, f"not a readable NIfTI file ({found})")


def _header_shape(hdr: nib.Nifti1Header, path: Path) -> tuple[int, ...]:
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise InputError(path, f"header dim[0] = {dim[0]} (the number of dimensions) must be 1 to 7")
    shape = tuple(dim[1:dim[0] + 1])
    for i, d in enumerate(shape, start=1):
        if d == 0:
            raise InputError(path, f"empty data: header dim[{i}] = 0 gives a dimension of size 0")
        if d < 0:
            raise InputError(path, f"header dim[{i}] = {d}: a dimension cannot be negative")
    return shape


def _check_magic(hdr: nib.Nifti1Header, path: Path, pair: bool) -> None:
    magic = bytes(hdr["magic"]).rstrip(b"\0")
    if pair and magic in (b"n+1", b"n+2"):
        raise InputError(path, f"header magic {magic.decode()!r} belongs to a single-file NIfTI, not a .hdr/.img pair")
    if pair and magic == b"":
        raise InputError(path, "an Analyze 7.5 header (no NIfTI magic): it does not say which way the patient's left "
                               "lies; convert it to NIfTI where that is known")
    if not pair and magic in (b"ni1", b"ni2"):
        raise InputError(path, f"header magic {magic.decode()!r} belongs to a .hdr/.img pair, not a single-file NIfTI")
    if magic not in ((b"ni1", b"ni2") if pair else (b"n+1", b"n+2")):
        raise InputError(path, f"not a readable NIfTI file (magic {magic!r})")


def _data_bytes(hdr: nib.Nifti1Header, shape: tuple[int, ...], path: Path) -> int:
    code = int(hdr["datatype"])
    try:
        dtype = hdr.get_data_dtype()
    except Exception:  # unknown codes raise KeyError or HeaderDataError depending on nibabel's version
        raise InputError(path, f"unsupported NIfTI datatype code {code}") from None
    n = int(dtype.itemsize)
    for d in shape:
        n *= d
    return n


def _check_data_extent(hdr: nib.Nifti1Header, shape: tuple[int, ...], path: Path, data_file: Path) -> None:
    """The data the header promises must fit in ``data_file`` (``path`` itself, or a pair's ``.img``): checked
    before anything is allocated."""
    offset = float(hdr["vox_offset"])
    minimum = hdr.single_vox_offset if data_file == path else 0
    if not np.isfinite(offset) or offset != int(offset) or offset < minimum:
        raise InputError(path, f"header vox_offset = {offset:g} must be a whole number >= {minimum}")
    needed = int(offset) + _data_bytes(hdr, shape, path)  # refuses an unknown datatype first
    check_data_fits(data_file, needed, f"{'x'.join(map(str, shape))} {hdr.get_data_dtype()}")


def _check_geometry_fields(hdr: nib.Nifti1Header, shape: tuple[int, ...], path: Path) -> None:
    for name in ("qform_code", "sform_code"):
        code = int(hdr[name])
        if code not in _XFORM_CODES:
            raise InputError(path, f"header {name} = {code} is not a NIfTI transform code (0 to 5)")
    pixdim = [float(p) for p in hdr["pixdim"][1:min(len(shape), 3) + 1]]
    for i, p in enumerate(pixdim, start=1):
        if not np.isfinite(p) or p == 0:
            raise InputError(path, f"header pixdim[{i}] = {p:g}: a voxel size must be finite and non-zero")


def _check_scaling(hdr: nib.Nifti1Header, path: Path) -> None:
    """scl_slope 0 or NaN means unscaled (the NIfTI standard, and what nibabel writes); +-Inf is corrupt."""
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if np.isinf(slope):
        raise InputError(path, f"header scl_slope = {slope:g}")
    if np.isfinite(slope) and slope != 0 and not np.isfinite(inter):
        raise InputError(path, f"header scl_inter = {inter:g} with scl_slope = {slope:g}")


def _check_header(path: Path) -> None:
    """Reject a header nibabel would silently fix, or whose data cannot be in the file (a pair's: its ``.img``)."""
    header, data = _pair_files(path) if _is_pair(path) else (path, path)
    hdr = _raw_header(header)
    _check_magic(hdr, header, pair=header != data)
    shape = _header_shape(hdr, header)
    _check_data_extent(hdr, shape, header, data)
    _check_geometry_fields(hdr, shape, path)
    _check_scaling(hdr, path)


def _open_image(path: Path) -> nib.Nifti1Image:
    _check_header(path)
    try:
        with quiet():
            img = nib.load(path, mmap=False)
    except READ_ERRORS as exc:
        raise InputError(path, f"not a readable NIfTI file ({one_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Pair, nib.Nifti2Pair)):  # the single-file images are pairs' subclasses
        raise InputError(path, f"not a NIfTI file (nibabel reads it as {type(img).__name__})")
    return img


def _header_meta(img: nib.Nifti1Image, path: Path) -> dict:
    hdr = img.header
    space_unit, time_unit = hdr.get_xyzt_units()
    return {
        "source": str(path),
        "format": "nifti",
        "qform": np.asarray(hdr.get_qform(), dtype=np.float64),
        "qform_code": int(hdr["qform_code"]),
        "sform": np.asarray(hdr.get_sform(), dtype=np.float64),
        "sform_code": int(hdr["sform_code"]),
        "zooms": tuple(float(z) for z in hdr.get_zooms()[:3]),
        "xyzt_units": (space_unit, time_unit),
        "shape_on_disk": tuple(int(s) for s in img.shape),
    }


def load_nifti(path: str | os.PathLike, volume_index: int | None = None) -> Volume:
    """Read a NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``, or a ``.hdr``/``.img`` pair) as a :class:`Volume`.

    Args:
        path: the file (either file of a pair).
        volume_index: which volume of 4-D data to read (0-based); required for 4-D data with
            more than one volume. 3-D data (also stored as (X, Y, Z, 1)) accepts None or 0.

    Returns:
        A Volume with float32 data of shape (X, Y, Z), scaled by scl_slope/scl_inter as
        ``get_fdata`` does; ``affine`` is nibabel's best affine (sform if its code is > 0, else
        qform if its code is > 0, else the zooms); ``meta`` holds ``qform``, ``qform_code``,
        ``sform``, ``sform_code``, ``zooms`` (3 floats, mm), ``xyzt_units``, ``shape_on_disk``,
        ``source``, ``format``, and ``volume_index`` when one was read from 4-D data.

    Raises:
        InputError: naming the file, for a missing file, a folder, a non-NIfTI or corrupt or
            truncated file, a header nibabel would have to fix (sizeof_hdr, magic, dim, datatype,
            vox_offset, pixdim, transform codes, infinite scl_slope), a header promising more data than
            the file holds (checked before allocating), 4-D data without a (valid) index, an empty
            dimension, NaN/Inf values, or a singular affine.
    """
    path = Path(path)
    check_input_file(path, "a NIfTI file (.nii, .nii.gz or a .hdr/.img pair)")
    img = _open_image(path)
    data = check_volume_array(read_volume_array(img, path, volume_index), path)
    affine = check_affine(img.affine, path)
    meta = _header_meta(img, path)
    if volume_index is not None and meta["shape_on_disk"][3:] and meta["shape_on_disk"][3] > 1:
        meta["volume_index"] = int(volume_index)
    return Volume(data=data, affine=affine, meta=meta)


def _meta_geometry(meta: dict, affine: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, int] | None:
    """Return (qform, qform_code, sform, sform_code) from ``meta`` when they still describe ``affine``.

    The codes pick the effective affine as nibabel does (sform first); when it no longer matches
    the volume's affine (the volume was resampled, or meta came from elsewhere) meta is stale.
    """
    keys = ("qform", "qform_code", "sform", "sform_code")
    if any(meta.get(k) is None for k in keys):
        return None
    try:
        qform = np.asarray(meta["qform"], dtype=np.float64).reshape(4, 4)
        sform = np.asarray(meta["sform"], dtype=np.float64).reshape(4, 4)
        qcode, scode = int(meta["qform_code"]), int(meta["sform_code"])
    except (TypeError, ValueError):
        return None
    if scode > 0:
        effective = sform
    elif qcode > 0:
        effective = qform
    else:
        return None
    if not np.allclose(effective, affine, rtol=0, atol=1e-6):
        return None
    return qform, qcode, sform, scode


def _build_header(volume: Volume) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(volume.shape)
    hdr.set_data_dtype(np.float32)
    geometry = _meta_geometry(volume.meta, volume.affine)
    if geometry is None:
        geometry = (volume.affine, _SCANNER, volume.affine, _SCANNER)
    qform, qcode, sform, scode = geometry
    # set_qform also sets pixdim (the zooms) from the qform's column norms: zooms and qform
    # always agree in NIfTI, so restoring the qform restores the zooms.
    hdr.set_qform(qform, code=qcode)
    hdr.set_sform(sform, code=scode)
    units = volume.meta.get("xyzt_units")
    try:
        hdr.set_xyzt_units(*(units if units else ("mm", "sec")))
    except (TypeError, ValueError, KeyError):
        hdr.set_xyzt_units("mm", "sec")
    provenance = {k: v for k, v in volume.meta.items() if k.startswith(PROVENANCE)}
    if provenance:  # the model-space placement (ldp_med.align), the settings' regimes ...: a JSON comment extension
        hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps({"ldp_med": provenance}).encode()))
    return hdr


def save_nifti(volume: Volume, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``volume`` as a float32 NIfTI-1 file, atomically.

    The geometry comes from ``volume.meta`` (``qform``, ``qform_code``, ``sform``,
    ``sform_code``) when present and consistent with ``volume.affine``, so a loaded volume is
    written back with identical affine, codes and zooms; otherwise both qform and sform are set
    to ``volume.affine`` with code 1 (scanner). The sform is stored in float32, as NIfTI requires.
    Metadata ``align_*`` (the estimated model-space placement) goes into a JSON comment extension.

    Args:
        volume: the volume; data of shape (X, Y, Z), all values finite.
        path: destination ending in ``.nii`` or ``.nii.gz``.
        force: overwrite an existing file.

    Returns:
        The destination path.

    Raises:
        InputError: naming ``path`` for a bad suffix, an existing file without ``force``, a
            missing output folder, non-3-D or non-finite data, or a singular affine.
    """
    path = Path(path)
    if not Path(path).name.lower().endswith((".nii", ".nii.gz")):
        raise InputError(path, "output must end in .nii or .nii.gz")
    data = check_volume_array(volume.data, path)
    check_affine(volume.affine, path)
    hdr = _build_header(volume)
    img = nib.Nifti1Image(data, affine=None, header=hdr)
    raw = img.to_bytes()
    with atomic_open(path, force) as fh:  # nameless until complete: a kill -9 leaves nothing
        fh.write(gzip.compress(raw, compresslevel=1, mtime=0) if str(path).endswith(".gz") else raw)
    return path
