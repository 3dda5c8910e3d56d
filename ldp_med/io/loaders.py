"""Format dispatch: pick the reader for a path from what it is (folder, suffix, DICOM marker), and the
writer for data from its kind (k-space container or volume)."""

from __future__ import annotations

import os
from pathlib import Path

from ldp_med.errors import InputError
from ldp_med.io.atomic import check_output
from ldp_med.io.dicom import folder_geometry, load_dicom
from ldp_med.io.dicom_out import is_dicom_output, save_dicom
from ldp_med.io.kspace import KSpaceData, save_kspace
from ldp_med.io.mgh import is_mgh_path, load_mgh, save_mgh
from ldp_med.io.minc import is_minc_path, load_minc
from ldp_med.io.nifti import is_nifti_path, load_nifti, save_nifti
from ldp_med.io.volume import MIN_SIZE, Volume, check_volume_content

__all__ = ["load_volume", "save_volume", "dicom_source", "save_output", "is_volume_path", "check_volume_path",
           "check_volume_output", "volume_stem", "is_kspace_file", "is_dicom_file", "header_geometry"]

#: What a volume output's name may end in (the writer follows the name): NIfTI, FreeSurfer MGH.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")

_DICOM_SUFFIXES = (".dcm", ".ima")
_KSPACE_SUFFIXES = (".h5", ".hdf5")
_READ_ONLY_SUFFIXES = (".mnc.gz", ".mnc", ".hdr.gz", ".img.gz", ".hdr", ".img")  # MINC, NIfTI pairs


def is_kspace_file(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.h5`` or ``.hdf5`` (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in _KSPACE_SUFFIXES


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a ``.dcm``/``.ima`` name, or a file whose bytes 128:132 are ``b"DICM"``."""
    path = Path(path)
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def is_volume_path(path: str | os.PathLike) -> bool:
    """True when a volume can be written at ``path``: the name ends in one of :data:`VOLUME_SUFFIXES`
    (case-insensitive), or has no suffix at all (a DICOM series folder,
    :func:`~ldp_med.io.dicom_out.is_dicom_output`)."""
    return Path(path).name.lower().endswith(VOLUME_SUFFIXES) or is_dicom_output(path)


def check_volume_path(path: str | os.PathLike) -> None:
    """Raise a one-line InputError unless a volume can be written at ``path`` (see :func:`is_volume_path`)."""
    if not is_volume_path(path):
        raise InputError(path, "output must end in .nii, .nii.gz, .mgh or .mgz, or be a folder name without a suffix "
                               "(a DICOM series)")


def check_volume_output(path: str | os.PathLike, force: bool = False, inputs=()) -> Path:
    """:func:`check_volume_path`, then :func:`~ldp_med.io.atomic.check_output` of ``path`` as the file or, for a
    DICOM series, the folder the name says: before any work, never an input, never over an output without
    ``force``."""
    check_volume_path(path)
    return check_output(path, force, inputs, folder=is_dicom_output(path))


def volume_stem(path: str | os.PathLike) -> str:
    """``scan.nii.gz`` -> ``scan``, ``brain.mgz`` -> ``brain``: the name without a volume or k-space suffix."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES + _READ_ONLY_SUFFIXES + _KSPACE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def header_geometry(path: str | os.PathLike) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """(shape, voxel sizes in mm) of the first three axes of a volume, from its header alone (no voxel read), or None
    when the header does not tell here (MINC, a single DICOM file, a k-space container) or cannot be read (the reader
    reports that, in its own words).

    NIfTI and MGH: the shape and the column norms of nibabel's affine, the affine the readers load (their voxel
    sizes to the bit). A DICOM series folder: :func:`~ldp_med.io.dicom.folder_geometry` (the slice spacing from
    ``SpacingBetweenSlices`` or ``SliceThickness``, where the reader measures it between positions)."""
    import nibabel as nib
    import numpy as np

    from ldp_med.io.guard import quiet

    try:
        if os.path.isdir(path):
            found = folder_geometry(Path(path))
            if found is None:
                return None
            shape, zooms = found[0], np.asarray(found[1], np.float64)
        elif is_nifti_path(path) or is_mgh_path(path):
            with quiet():  # a bad header's warnings are not for here: the reader reports it in one line
                img = nib.load(str(path))
                shape, affine = tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, np.float64)
            zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        else:
            return None
    except Exception:  # noqa: BLE001 - unreadable headers are the reader's to report, with its message
        return None
    if len(shape) < 3 or not np.all(np.isfinite(zooms) & (zooms > 0)):
        return None  # odd sizes or spacings: the reader refuses them in one line
    return shape, tuple(float(z) for z in zooms)


def load_volume(path: str | os.PathLike, volume_index: int | None = None, min_size: int = MIN_SIZE) -> Volume:
    """Read a volume from a NIfTI file, a FreeSurfer MGH/MGZ file, a MINC file, a DICOM series folder or a DICOM file.

    Dispatch: a folder, a ``.dcm``/``.ima`` file or a file with the DICOM marker -> :func:`load_dicom`;
    ``.nii``/``.nii.gz`` and ``.hdr``/``.img`` pairs -> :func:`load_nifti`; ``.mgh``/``.mgz`` -> :func:`load_mgh`;
    ``.mnc``/``.mnc.gz`` -> :func:`~ldp_med.io.minc.load_minc`; anything else is an error.
    The volume must then have at least ``min_size`` voxels along every axis and more than one intensity
    (:func:`check_volume_content`).

    Args:
        path: file or folder.
        volume_index: volume of 4-D NIfTI, MGH or MINC data to read; not valid for DICOM.
        min_size: fewest voxels along each axis (default :data:`~ldp_med.io.volume.MIN_SIZE`; 1 accepts
            a single DICOM slice).

    Returns:
        A Volume: float32 data (X, Y, Z), RAS+ affine (4, 4), meta.

    Raises:
        InputError: naming the path for a missing path, an unrecognised format, a volume index
            given for DICOM, a volume too small or of constant intensity, or any error of the chosen reader.
    """
    return check_volume_content(_read_volume(Path(path), volume_index), path, min_size)


def _read_volume(path: Path, volume_index: int | None) -> Volume:
    """Pick the reader for ``path`` and read it."""
    if not path.exists():
        raise InputError(path, "file or folder not found")
    if is_nifti_path(path):
        return load_nifti(path, volume_index=volume_index)
    if is_mgh_path(path):
        return load_mgh(path, volume_index=volume_index)
    if is_minc_path(path):
        return load_minc(path, volume_index=volume_index)
    if path.is_dir() or is_dicom_file(path):
        if volume_index is not None:
            raise InputError(path, "a volume index applies to 4-D NIfTI, MGH or MINC only, not to DICOM")
        return load_dicom(path)
    if is_kspace_file(path):
        raise InputError(path, "is a k-space container (HDF5), not a volume; read it with load_kspace")
    raise InputError(path, "unrecognised format (expected NIfTI .nii/.nii.gz/.hdr+.img, FreeSurfer .mgh/.mgz, MINC "
                           ".mnc/.mnc.gz or a DICOM folder)")


def save_volume(volume: Volume, path: str | os.PathLike, force: bool = False) -> Path:
    """Write a volume in the format its name says: :func:`~ldp_med.io.mgh.save_mgh` for ``.mgh``/``.mgz``,
    :func:`~ldp_med.io.nifti.save_nifti` for ``.nii``/``.nii.gz``, :func:`~ldp_med.io.dicom_out.save_dicom` for a
    name without a suffix (a DICOM series folder; one derived from a DICOM input, ``meta["source"]``, joins that
    input's study); any other name is an InputError."""
    check_volume_path(path)
    if is_dicom_output(path):
        return save_dicom(volume, path, force=force, like=dicom_source(volume))
    return save_mgh(volume, path, force=force) if is_mgh_path(path) else save_nifti(volume, path, force=force)


def dicom_source(volume: Volume) -> Path | None:
    """The DICOM file or series folder ``volume`` was read or derived from (``meta["source"]``), else None."""
    source = volume.meta.get("source")
    if not source or not os.path.exists(source):
        return None
    return Path(source) if os.path.isdir(source) or is_dicom_file(source) else None


def save_output(data: KSpaceData | Volume, path: str | os.PathLike, force: bool = False) -> Path:
    """Write k-space with :func:`~ldp_med.io.kspace.save_kspace`, a volume with :func:`save_volume`.

    Args:
        data: a k-space container (``path`` ``.h5``/``.hdf5``) or a volume (``path`` ``.nii``/``.nii.gz``/
            ``.mgh``/``.mgz``).
        path: destination.
        force: overwrite an existing file.

    Returns:
        The destination path.

    Raises:
        InputError: naming ``path``, as raised by the writer.
    """
    if isinstance(data, KSpaceData):
        return save_kspace(data, path, force=force)
    return save_volume(data, path, force=force)
