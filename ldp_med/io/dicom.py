"""DICOM reading via pydicom: one series from a folder, a single-frame file, or an enhanced multi-frame file.

Geometry follows the DICOM image plane module. With ``r`` = ImageOrientationPatient[:3] (the
direction of increasing column index, along a row), ``c`` = ImageOrientationPatient[3:] (the
direction of increasing row index), PixelSpacing = (row spacing, column spacing) and the slices
sorted by their ImagePositionPatient projected on the normal ``n = r x c``, the volume array has
axes (column index i, row index j, slice k) and, in DICOM patient coordinates (LPS+)::

    affine_lps[:3, 0] = r * PixelSpacing[1]
    affine_lps[:3, 1] = c * PixelSpacing[0]
    affine_lps[:3, 2] = mean step between consecutive sorted slice positions
    affine_lps[:3, 3] = ImagePositionPatient of the first sorted slice

The returned affine is RAS+ (NIfTI convention): ``affine = diag(-1, -1, 1, 1) @ affine_lps``,
i.e. the signs of its first two rows are flipped.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ldp_med.errors import InputError, one_line
from ldp_med.io.volume import Volume, check_affine, check_volume_array

__all__ = ["folder_geometry", "load_dicom", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SPACING_TOL = 0.01  # relative tolerance on the step between slices
_SAME_POSITION_MM = 1e-3


@dataclass
class _Slice:
    """One 2-D image: pixels of shape (rows, cols), float32, already rescaled; geometry in LPS mm."""

    pixels: np.ndarray
    position: np.ndarray  # (3,) ImagePositionPatient
    orientation: np.ndarray  # (6,) ImageOrientationPatient
    spacing: np.ndarray  # (2,) PixelSpacing: (row spacing, column spacing)
    thickness: float | None
    source: str


@contextmanager
def _quiet():
    """pydicom warns about invalid values and numpy about overflow; both become one InputError instead."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _has_marker(file: Path) -> bool:
    try:
        with open(file, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read(file: Path) -> Dataset:
    """Read one file; InvalidDicomError propagates (not DICOM), other failures become InputError.

    A file with the ``DICM`` marker that pydicom cannot parse is a corrupt DICOM file, not a foreign one.
    """
    try:
        return pydicom.dcmread(file, force=False, defer_size="256 KB")
    except InvalidDicomError as exc:
        if _has_marker(file):
            raise InputError(file, f"corrupt DICOM file ({one_line(exc)})") from None
        raise
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise InputError(file, f"corrupt DICOM file ({one_line(exc)})") from None


def _has_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds


def _folder_datasets(folder: Path) -> list[tuple[Path, Dataset]]:
    """All DICOM files with pixel data under ``folder`` (recursively); non-DICOM files are skipped."""
    found, without_pixels = [], 0
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = _read(file)
        except InvalidDicomError:
            continue
        if _has_pixels(ds):
            found.append((file, ds))
        elif len(ds) == 0 or "Rows" in ds:  # an image whose pixels are missing: cut short, not a DICOMDIR
            raise InputError(file, "DICOM image without pixel data (truncated file?)")
        else:
            without_pixels += 1
    if not found:
        extra = f" ({without_pixels} DICOM files without pixel data)" if without_pixels else ""
        raise InputError(folder, f"no DICOM image files found{extra}")
    return found


def folder_geometry(folder: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]] | None:
    """((rows, columns, frames), (row spacing, column spacing, slice spacing)) of the DICOM images under ``folder``
    from their headers alone (pixels not read: 0.4 s for a 182-slice 1 mm series); None when it holds none. Frames
    of every image file count, so a folder of several series (which :func:`load_dicom` refuses) gives their sum; a
    file whose values are odd is skipped here and reported by the reader."""
    shape, zooms, frames = None, None, 0
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            with _quiet():
                ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=[
                    "Rows", "Columns", "NumberOfFrames", "PixelSpacing", "SpacingBetweenSlices", "SliceThickness"])
                rows, columns, n = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1)
                pixel = [float(v) for v in ds.get("PixelSpacing") or (1.0, 1.0)][:2]
                step = abs(float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or pixel[0]))
        except Exception:  # noqa: BLE001 - not DICOM, not an image, or odd values: the reader decides
            continue
        frames += max(n, 1)
        if shape is None:
            shape, zooms = (rows, columns), (*pixel, step)
    return ((*shape, frames), zooms) if shape else None


def _single_series(items: list[tuple[Path, Dataset]], folder: Path) -> list[tuple[Path, Dataset]]:
    """Check that all datasets belong to one SeriesInstanceUID; list the series otherwise."""
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for file, ds in items:
        series[str(ds.get("SeriesInstanceUID", "<no SeriesInstanceUID>"))].append((file, ds))
    if len(series) == 1:
        return items
    listing = "; ".join(
        f"{uid} '{members[0][1].get('SeriesDescription', '')}' ({len(members)} files)"
        for uid, members in sorted(series.items())
    )
    raise InputError(folder, f"{len(series)} series in one folder, pass a folder holding one: {listing}")


def _tag(item: Dataset | None, keyword: str, file: Path, where: str = ""):
    """The value of ``keyword`` in ``item`` (None when absent); a value pydicom cannot parse is an InputError."""
    if item is None:
        return None
    try:
        return item.get(keyword)
    except Exception as exc:  # pydicom converts values lazily and raises on text in a numeric tag
        raise InputError(file, f"{keyword}{where} is not readable ({one_line(exc)})") from None


def _floats(item: Dataset | None, keyword: str, n: int, file: Path, where: str = "") -> np.ndarray:
    value = _tag(item, keyword, file, where)
    if value is None or value == "":
        raise InputError(file, f"missing {keyword}{where}; cannot place the image in space")
    try:
        values = np.asarray([float(v) for v in np.atleast_1d(value)], dtype=np.float64)
    except (TypeError, ValueError):
        values = np.full(0, np.nan)
    if values.shape != (n,) or not np.isfinite(values).all():
        raise InputError(file, f"{keyword}{where} must hold {n} finite numbers, got {value}")
    return values


def _spacing(item: Dataset | None, file: Path, where: str = "") -> np.ndarray:
    spacing = _floats(item, "PixelSpacing", 2, file, where)
    if (spacing <= 0).any():
        raise InputError(file, f"PixelSpacing{where} must be positive, got {list(spacing)}")
    return spacing


def _optional_float(item: Dataset | None, keyword: str, file: Path, where: str = "") -> float | None:
    value = _tag(item, keyword, file, where)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(file, f"{keyword}{where} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise InputError(file, f"{keyword}{where} must be finite, got {value}")
    return number


def _int_tag(ds: Dataset, keyword: str, file: Path, default: int | None = None) -> int:
    """An integer tag (``default`` when absent or empty); anything else is an InputError."""
    value = _tag(ds, keyword, file)
    if value is None or value == "":
        if default is None:
            raise InputError(file, f"missing {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(file, f"{keyword} must be an integer, got {value!r}") from None


def _n_frames(ds: Dataset, file: Path) -> int:
    n = _int_tag(ds, "NumberOfFrames", file, 1) or 1
    if n < 1:
        raise InputError(file, f"NumberOfFrames must be >= 1, got {n}")
    return n


def _pixel_frames(ds: Dataset, file: Path, n_frames: int) -> np.ndarray:
    """Decoded stored values, shape (frames, rows, cols)."""
    samples = _int_tag(ds, "SamplesPerPixel", file, 1)
    if samples != 1:
        raise InputError(file, f"colour images (SamplesPerPixel {samples}) are not supported")
    rows, cols = _int_tag(ds, "Rows", file), _int_tag(ds, "Columns", file)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # decoders raise many types (missing plugin, bad length, ...)
        raise InputError(file, f"cannot decode pixel data (transfer syntax {syntax}): {one_line(exc)}") from None
    if pixels.size != n_frames * rows * cols:
        raise InputError(file, f"pixel data holds {pixels.size} values, expected {n_frames} x {rows} x {cols}")
    return pixels.reshape(n_frames, rows, cols)


def _rescale(pixels: np.ndarray, slope: float | None, intercept: float | None) -> np.ndarray:
    slope = 1.0 if slope is None else slope
    intercept = 0.0 if intercept is None else intercept
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def _single_frame_slice(ds: Dataset, file: Path) -> _Slice:
    pixels = _pixel_frames(ds, file, 1)[0]
    return _Slice(
        pixels=_rescale(pixels, _optional_float(ds, "RescaleSlope", file),
                        _optional_float(ds, "RescaleIntercept", file)),
        position=_floats(ds, "ImagePositionPatient", 3, file),
        orientation=_floats(ds, "ImageOrientationPatient", 6, file),
        spacing=_spacing(ds, file),
        thickness=_thickness(ds, file),
        source=str(file),
    )


def _thickness(item: Dataset | None, file: Path, where: str = "") -> float | None:
    """SpacingBetweenSlices, else SliceThickness (used for one-slice volumes); must be positive when given."""
    value = _optional_float(item, "SpacingBetweenSlices", file, where) or _optional_float(
        item, "SliceThickness", file, where)
    if value is not None and value < 0:
        raise InputError(file, f"slice thickness{where} must be positive, got {value}")
    return value


def _group_item(ds: Dataset, frame: int, name: str) -> Dataset | None:
    """The first item of functional group ``name`` for ``frame``: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        items = seq[index].get(name) if seq is not None and index < len(seq) else None
        if items:
            return items[0]
    return None


def _multi_frame_slices(ds: Dataset, file: Path) -> list[_Slice]:
    """One slice per frame of an enhanced multi-frame image, geometry from the functional groups."""
    n_frames = _n_frames(ds, file)
    if "PerFrameFunctionalGroupsSequence" not in ds and "SharedFunctionalGroupsSequence" not in ds:
        raise InputError(file, f"multi-frame file ({n_frames} frames) without per-frame geometry "
                               "(no PerFrame/SharedFunctionalGroupsSequence)")
    frames = _pixel_frames(ds, file, n_frames)
    slices = []
    for f in range(n_frames):
        where = f" for frame {f + 1}"
        measures = _group_item(ds, f, "PixelMeasuresSequence")
        transform = _group_item(ds, f, "PixelValueTransformationSequence") or ds
        slices.append(_Slice(
            pixels=_rescale(frames[f], _optional_float(transform, "RescaleSlope", file, where),
                            _optional_float(transform, "RescaleIntercept", file, where)),
            position=_floats(_group_item(ds, f, "PlanePositionSequence"), "ImagePositionPatient", 3, file, where),
            orientation=_floats(_group_item(ds, f, "PlaneOrientationSequence"), "ImageOrientationPatient", 6,
                                file, where),
            spacing=_spacing(measures, file, where),
            thickness=_thickness(measures, file, where),
            source=f"{file} frame {f + 1}",
        ))
    return slices


def _dataset_slices(ds: Dataset, file: Path) -> list[_Slice]:
    n_frames = _n_frames(ds, file)
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return _multi_frame_slices(ds, file)
    return [_single_frame_slice(ds, file)]


def _check_common_grid(slices: list[_Slice], path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check that all slices share size, orientation and pixel spacing; return (r, c, spacing)."""
    first = slices[0]
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise InputError(path, f"image sizes differ: {first.pixels.shape} in {first.source}, "
                                   f"{s.pixels.shape} in {s.source}")
        if np.abs(s.orientation - first.orientation).max() > 1e-3:
            raise InputError(path, f"ImageOrientationPatient differs between {first.source} and {s.source}")
        if not np.allclose(s.spacing, first.spacing, rtol=1e-3, atol=0):
            raise InputError(path, f"PixelSpacing differs between {first.source} and {s.source}")
    r, c = first.orientation[:3], first.orientation[3:]
    if abs(np.linalg.norm(r) - 1) > 1e-3 or abs(np.linalg.norm(c) - 1) > 1e-3 or abs(r @ c) > 1e-3:
        raise InputError(path, f"ImageOrientationPatient {list(first.orientation)} is not two orthonormal vectors")
    return r / np.linalg.norm(r), c / np.linalg.norm(c), first.spacing


def _slice_step(slices: list[_Slice], normal: np.ndarray, path: Path) -> np.ndarray:
    """Mean step vector between consecutive (sorted) slices; checks duplicates and regular spacing."""
    if len(slices) == 1:
        return normal * (slices[0].thickness or 1.0)
    positions = np.stack([s.position for s in slices])
    along = positions @ normal
    gaps = np.diff(along)
    duplicates = np.flatnonzero(np.abs(gaps) < _SAME_POSITION_MM)
    if duplicates.size:
        k = duplicates[0]
        raise InputError(path, f"two slices share position {along[k]:.3f} mm along the slice normal "
                               f"({slices[k].source}, {slices[k + 1].source}); the series may hold several "
                               "echoes, time points or stacks")
    steps = np.diff(positions, axis=0)
    mean_step = (positions[-1] - positions[0]) / (len(slices) - 1)
    deviation = np.linalg.norm(steps - mean_step, axis=1) / np.linalg.norm(mean_step)
    if deviation.max() > _SPACING_TOL:
        lengths = np.linalg.norm(steps, axis=1)
        raise InputError(path, f"inconsistent slice spacing: steps from {lengths.min():.4g} to "
                               f"{lengths.max():.4g} mm (more than 1% apart); missing or extra slices?")
    return mean_step


def _assemble(slices: list[_Slice], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stack slices into data (cols, rows, slices) float32 and its RAS+ affine (4, 4)."""
    r, c, spacing = _check_common_grid(slices, path)
    normal = np.cross(r, c)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    affine = np.eye(4)
    affine[:3, 0] = r * spacing[1]
    affine[:3, 1] = c * spacing[0]
    affine[:3, 2] = _slice_step(slices, normal, path)
    affine[:3, 3] = slices[0].position
    # pixel_array is (rows, cols): transpose so array axis 0 is the column index i.
    data = np.stack([s.pixels.T for s in slices], axis=-1)
    return data, LPS_TO_RAS @ affine


def load_dicom(path: str | os.PathLike) -> Volume:
    """Read one DICOM series (a folder, searched recursively) or one DICOM file as a :class:`Volume`.

    Non-DICOM files in a folder are skipped silently, as are DICOM files without pixel data
    (e.g. DICOMDIR). A single-frame file gives a one-slice volume; an enhanced multi-frame file
    gives one slice per frame, placed with its Plane Position/Orientation and Pixel Measures
    functional groups. RescaleSlope/RescaleIntercept are applied per slice (per frame).

    DICOM patient coordinates are LPS+; the affine is converted to RAS+ (NIfTI convention) by
    flipping the sign of its first two rows. See the module docstring for the exact layout.

    Args:
        path: a folder holding one series, or a DICOM file.

    Returns:
        A Volume with float32 data of shape (columns, rows, slices) and a RAS+ affine; ``meta``
        holds ``source``, ``format`` ("dicom"), ``series_instance_uid``, ``series_description``,
        ``modality``, ``n_files`` and ``n_slices``.

    Raises:
        InputError: naming the path for a missing path, a corrupt DICOM file, no DICOM images, several series
            (listed with UID, description and file count), missing or inconsistent geometry,
            duplicate slice positions, slice spacing irregular by more than 1%, undecodable
            pixel data, or NaN/Inf values.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file or folder not found")
    with _quiet():
        return _load(path)


def _load(path: Path) -> Volume:
    """:func:`load_dicom` without the checks on ``path`` itself."""
    if path.is_dir():
        items = _single_series(_folder_datasets(path), path)
    else:
        try:
            items = [(path, _read(path))]
        except InvalidDicomError:
            raise InputError(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
        if not _has_pixels(items[0][1]):
            raise InputError(path, "DICOM file without pixel data")
    slices = [s for file, ds in items for s in _dataset_slices(ds, file)]
    data, affine = _assemble(slices, path)
    data = check_volume_array(data, path)
    affine = check_affine(affine, path)
    ds = items[0][1]
    meta = {
        "source": str(path),
        "format": "dicom",
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "series_description": str(ds.get("SeriesDescription", "")),
        "modality": str(ds.get("Modality", "")),
        "n_files": len(items),
        "n_slices": len(slices),
    }
    return Volume(data=data, affine=affine, meta=meta)
