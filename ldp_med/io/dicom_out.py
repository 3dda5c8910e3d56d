"""Writing a volume as a DICOM series: one classic MR image file per slice, in a folder that appears whole.

The layout is the reader's (:mod:`ldp_med.io.dicom`) run backwards. Slice ``k`` of the array is file
``IM<k+1>.dcm``; its pixel ``[j, i]`` is voxel ``[i, j, k]``; with the affine in DICOM patient coordinates (LPS+,
``LPS_TO_RAS @ affine``), ``ImageOrientationPatient`` holds the unit directions of array axes 0 and 1,
``PixelSpacing`` their lengths (row spacing first), ``ImagePositionPatient`` the position of voxel ``(0, 0, k)``.
Reading the folder back with :func:`ldp_med.io.load_dicom` places every voxel where it was (to ~1e-6 mm); the
array comes back flipped along the slice axis where that axis points against ``r x c``, as a DICOM reader sorts
slices along the normal (the geometry, not the storage order, is what survives).

Values are stored as unsigned 16-bit integers with one ``RescaleSlope``/``RescaleIntercept`` for the series (the
volume's range over 65535 steps: a step is 1.5e-5 of the range, far below any image's noise).

A series derived from a DICOM input (``like``) joins that input's study: it copies the patient, study and frame of
reference modules and the acquisition's MR parameters of one of its files, and gets a new series and new instance
UIDs, ``ImageType`` ``DERIVED\\SECONDARY`` and the series number plus 1000. Without ``like`` (a NIfTI, MGH or
k-space input) the series starts a new study with empty patient fields.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from ldp_med.errors import InputError, one_line
from ldp_med.io.atomic import atomic_folder
from ldp_med.io.dicom import LPS_TO_RAS
from ldp_med.io.volume import Volume, check_volume_array

__all__ = ["save_dicom", "is_dicom_output"]

_LEVELS = 65535  # stored values 0 .. 65535 (16 bits, unsigned)
_PERPENDICULAR_TOL = 1e-4  # |cos| between the in-plane axes that DICOM's orientation can hold
#: Copied from one file of the input series: who and which study (the series joins it), the frame of reference (the
#: same patient coordinates) and the acquisition's MR parameters (the images still show that contrast).
_COPIED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
    "StudyDescription", "FrameOfReferenceUID", "PositionReferenceIndicator", "PatientPosition", "BodyPartExamined",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "RepetitionTime", "EchoTime",
    "InversionTime", "EchoTrainLength", "FlipAngle", "MagneticFieldStrength",
)
#: Type 1 and 2 fields of the MR image's modules when there is nothing to copy them from.
_DEFAULTS = {
    "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "", "StudyID": "", "AccessionNumber": "",
    "ReferringPhysicianName": "", "PositionReferenceIndicator": "", "ScanningSequence": "RM", "SequenceVariant": "NONE",
    "ScanOptions": "", "MRAcquisitionType": "3D", "RepetitionTime": "", "EchoTime": "", "EchoTrainLength": "",
    "PatientPosition": "",
}


def is_dicom_output(path: str | os.PathLike) -> bool:
    """True for an output name without a suffix (``recon``, ``out/t1_series``): a folder for a DICOM series."""
    path = Path(path)
    return path.name not in ("", ".", "..") and path.suffix == ""


def save_dicom(volume: Volume, folder: str | os.PathLike, force: bool = False,
               like: str | os.PathLike | None = None, inputs=()) -> Path:
    """Write ``volume`` as a DICOM series, one MR image file per slice of its last array axis (module docstring).

    Args:
        volume: the volume (RAS+ affine whose first two axes are perpendicular, as every DICOM image's are).
        folder: the series' folder; it appears whole (:func:`ldp_med.io.atomic.atomic_folder`).
        force: replace an existing folder of ``.dcm`` files.
        like: a DICOM file or series folder whose patient, study and frame of reference the series joins (the
            input it was derived from); None: a new study.
        inputs: files or folders the command read, which the output may not be, hold or replace.

    Returns:
        The folder.

    Raises:
        InputError: naming ``folder`` for an affine DICOM cannot hold (sheared in-plane axes), data that is not a
            finite 3-D volume (:func:`~ldp_med.io.volume.check_volume_array`), an output refused by
            :func:`~ldp_med.io.atomic.check_output`, or a failed write; naming ``like`` when it holds no readable
            DICOM file.
    """
    folder = Path(folder)
    data = np.asarray(check_volume_array(volume.data, folder), np.float64)
    geometry = _geometry(volume.affine, folder)
    source = _like_dataset(Path(like)) if like is not None else None
    slope, intercept = _rescale(data)
    stored = np.clip(np.rint((data - intercept) / slope), 0, _LEVELS).astype(np.uint16)
    common = _series_dataset(volume, source, geometry, data, slope, intercept)
    width = max(5, len(str(data.shape[2])))
    with atomic_folder(folder, force, inputs) as tmp:
        for k in range(data.shape[2]):
            ds = _slice_dataset(common, k, geometry, stored[:, :, k])
            ds.save_as(tmp / f"IM{k + 1:0{width}d}.dcm", enforce_file_format=True)
    return folder


def _geometry(affine: np.ndarray, folder: Path) -> dict:
    """The series' geometry in LPS: unit in-plane directions ``r``, ``c``, their spacings, the normal, the slice
    step and voxel (0, 0, 0)'s position."""
    lps = LPS_TO_RAS @ np.asarray(affine, np.float64)  # the same flip both ways
    col, row = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    r, c = lps[:3, 0] / col, lps[:3, 1] / row
    if abs(float(r @ c)) > _PERPENDICULAR_TOL:
        raise InputError(folder, f"the volume's first two axes are not perpendicular (cos {float(r @ c):.3g}); a "
                                 "DICOM image plane cannot hold a sheared grid: write NIfTI instead")
    normal = np.cross(r, c)
    return {"r": r, "c": c, "spacing": (row, col), "normal": normal, "step": lps[:3, 2], "origin": lps[:3, 3]}


def _like_dataset(like: Path) -> Dataset:
    """One file of the input series (its first in name order), read without its pixels."""
    files = [like] if like.is_file() else sorted(p for p in like.rglob("*") if p.is_file())
    for file in files:
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - a non-DICOM file in the series folder: skipped, as the reader does
            continue
        if "SOPClassUID" in ds:
            return ds
    raise InputError(like, "no readable DICOM file to take the patient and study from")


def _rescale(data: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) mapping 0 .. 65535 onto the data's range (from 0 when the data are >= 0); as written (DS
    strings hold 16 characters), so the stored values are computed with what a reader will apply."""
    lo = min(float(data.min()), 0.0)
    span = float(data.max()) - lo
    slope = float(DSfloat(span / _LEVELS if span > 0 else 1.0, auto_format=True))
    return slope, float(DSfloat(lo, auto_format=True))


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _series_dataset(volume: Volume, source: Dataset | None, geometry: dict, data: np.ndarray, slope: float,
                    intercept: float) -> Dataset:
    """The fields every file of the series shares."""
    from ldp_med import __version__

    now = datetime.datetime.now()
    ds = Dataset()
    for keyword, value in _DEFAULTS.items():
        setattr(ds, keyword, value)
    if source is not None:
        for keyword in _COPIED:
            if keyword in source:
                ds[keyword] = source[keyword]
    else:
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
        ds.StudyDate, ds.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    method = str(volume.meta.get("method", "")).strip()
    what = f"ldp-med {method}".strip()
    described = str(source.get("SeriesDescription", "")) if source is not None else ""
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1000 + _series_number(source)
    ds.SeriesDescription = f"{described} {what}".strip()[:64]
    ds.SeriesDate = ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"{what} of {Path(str(volume.meta.get('source', ''))).name or 'a volume'}"[:1024]
    ds.Manufacturer = "ldp-med"
    ds.SoftwareVersions = str(__version__)
    ds.ImageOrientationPatient = [_ds(v) for v in np.concatenate([geometry["r"], geometry["c"]])]
    ds.PixelSpacing = [_ds(v) for v in geometry["spacing"]]
    thickness = abs(float(geometry["step"] @ geometry["normal"]))
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(thickness)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds(slope), _ds(intercept), "US"
    lo, hi = np.percentile(data, [0.5, 99.5])
    ds.WindowCenter, ds.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, slope))
    return ds


def _series_number(source: Dataset | None) -> int:
    try:
        return int(source.SeriesNumber) if source is not None and source.get("SeriesNumber") not in (None, "") else 0
    except (TypeError, ValueError):
        return 0


def _slice_dataset(common: Dataset, k: int, geometry: dict, stored: np.ndarray) -> Dataset:
    """File ``k``: the shared fields, this slice's position and UIDs, and its pixels (``stored`` is (X, Y): the
    image's rows run along array axis 1)."""
    ds = Dataset()
    ds.update(common)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.InstanceNumber = k + 1
    position = geometry["origin"] + k * geometry["step"]
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(position @ geometry["normal"])
    try:
        ds.set_pixel_data(np.ascontiguousarray(stored.T), "MONOCHROME2", 16)
    except Exception as exc:  # noqa: BLE001 - pydicom's checks of the array: one line
        raise InputError(None, f"cannot store slice {k + 1} in DICOM ({one_line(exc)})") from None
    return ds
