"""DICOM reading: geometry of an oblique series against hand-computed positions, rescaling, errors."""

from __future__ import annotations

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ldp_med.errors import InputError
from ldp_med.io import load_dicom, load_volume

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
ROWS, COLS, N_SLICES = 9, 12, 7
SPACING = (0.7, 1.3)  # PixelSpacing: (row spacing, column spacing)
STEP = 2.2
SLOPE, INTERCEPT = 2.0, -10.0


def _orientation() -> tuple[np.ndarray, np.ndarray]:
    """Oblique unit row/column cosines, rounded as a scanner would write them."""
    a, b = 0.4, -0.3
    r = np.array([np.cos(a), np.sin(a), 0.0])
    c = np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)])
    return np.round(r, 6), np.round(c, 6)


def _geometry() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    r, c = _orientation()
    normal = np.cross(r, c)
    origin = np.array([-40.5, 12.25, 60.0])
    positions = [np.round(origin + k * STEP * normal, 4) for k in range(N_SLICES)]
    return r, c, positions


def _raw(k: int) -> np.ndarray:
    """Stored values of slice k, shape (rows, cols), unique per pixel."""
    return (1000 * k + 20 * np.arange(ROWS)[:, None] + np.arange(COLS)[None, :]).astype(np.uint16)


def _base(sop_class: str, series_uid: str, description: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds



def _write_slice(path, k, position, r, c, series_uid, description="t1 oblique"):
    ds = _base(MR_STORAGE, series_uid, description)
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([r, c])]
    ds.PixelSpacing = [str(s) for s in SPACING]
    ds.SliceThickness = "2.0"
    ds.RescaleSlope, ds.RescaleIntercept = str(SLOPE), str(INTERCEPT)
    ds.PixelData = _raw(k).astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _write_series(folder, series_uid, order, description="t1 oblique", nested=True):
    r, c, positions = _geometry()
    for n, k in enumerate(order):
        sub = folder / "sub" if nested and n % 2 else folder
        _write_slice(sub / f"img{n:03d}.dcm", k, positions[k], r, c, series_uid, description)


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "series"
    order = np.random.default_rng(3).permutation(N_SLICES)
    _write_series(folder, generate_uid(), order)
    (folder / "notes.txt").write_text("not dicom\n")
    (folder / "README").write_bytes(b"\0" * 300)
    return folder


def _expected_ras(i, j, k) -> np.ndarray:
    """World position of pixel (row j, column i) of slice k, from the DICOM definition, in RAS."""
    r, c, positions = _geometry()
    lps = positions[k] + i * SPACING[1] * r + j * SPACING[0] * c
    return lps * np.array([-1.0, -1.0, 1.0])


def test_series_affine_matches_hand_computed_positions(series):
    vol = load_dicom(series)
    assert vol.shape == (COLS, ROWS, N_SLICES) and vol.data.dtype == np.float32
    for i, j, k in [(0, 0, 0), (COLS - 1, 0, 0), (0, ROWS - 1, 0), (0, 0, N_SLICES - 1),
                    (COLS - 1, ROWS - 1, N_SLICES - 1), (5, 3, 4)]:
        world = vol.affine @ np.array([i, j, k, 1.0])
        np.testing.assert_allclose(world[:3], _expected_ras(i, j, k), atol=1e-3)
    np.testing.assert_allclose(vol.voxel_sizes, [SPACING[1], SPACING[0], STEP], rtol=1e-4)
    assert vol.meta["modality"] == "MR" and vol.meta["series_description"] == "t1 oblique"
    assert vol.meta["n_files"] == N_SLICES


def test_series_data_is_rescaled_and_transposed(series):
    vol = load_dicom(series)
    expected = np.stack([_raw(k).T.astype(np.float32) * SLOPE + INTERCEPT for k in range(N_SLICES)], axis=-1)
    np.testing.assert_array_equal(vol.data, expected)


def test_load_volume_dispatches_folder_and_marker(series, tmp_path):
    assert load_volume(series).meta["format"] == "dicom"
    plain = tmp_path / "IM0001"  # no suffix: recognised by the DICM marker
    plain.write_bytes(next(series.glob("*.dcm")).read_bytes())
    assert load_volume(plain, min_size=1).shape == (COLS, ROWS, 1)
    with pytest.raises(InputError, match="4-D NIfTI, MGH or MINC only"):
        load_volume(series, volume_index=0)


def test_two_series_are_listed(series):
    _write_series(series / "other", "1.2.3.4.5", range(3), description="flair", nested=False)
    with pytest.raises(InputError, match="2 series") as info:
        load_dicom(series)
    message = str(info.value)
    assert "1.2.3.4.5 'flair' (3 files)" in message
    assert f"'t1 oblique' ({N_SLICES} files)" in message
    assert "\n" not in message


def test_duplicate_position(tmp_path):
    _write_series(tmp_path, "1.2.3", [0, 1, 2, 2], nested=False)
    with pytest.raises(InputError, match="share position"):
        load_dicom(tmp_path)


def test_missing_slice_breaks_spacing(tmp_path):
    _write_series(tmp_path, "1.2.3", [0, 1, 2, 4, 5], nested=False)
    with pytest.raises(InputError, match="inconsistent slice spacing"):
        load_dicom(tmp_path)


def test_no_dicom_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM image files"):
        load_dicom(tmp_path)
    with pytest.raises(InputError, match="not a DICOM file"):
        load_dicom(tmp_path / "a.txt")
    with pytest.raises(InputError, match="not found"):
        load_dicom(tmp_path / "missing")


def test_bundled_mr_small_single_file():
    path = pydicom.data.get_testdata_file("MR_small.dcm", download=False)
    if path is None:
        pytest.skip("pydicom test data not installed")
    ds = pydicom.dcmread(path)
    vol = load_dicom(path)
    assert vol.shape == (ds.Columns, ds.Rows, 1)
    np.testing.assert_array_equal(vol.data[..., 0], ds.pixel_array.T.astype(np.float32))
    lps = np.array([float(v) for v in ds.ImagePositionPatient])
    np.testing.assert_allclose(vol.affine[:3, 3], lps * [-1, -1, 1])


def test_bundled_enhanced_mr_if_available():
    path = pydicom.data.get_testdata_file("emri_small.dcm", download=False)
    if path is None:
        pytest.skip("emri_small.dcm is not bundled with this pydicom (downloads are not attempted)")
    ds = pydicom.dcmread(path)
    vol = load_dicom(path)
    assert vol.shape == (ds.Columns, ds.Rows, int(ds.NumberOfFrames))


def _write_enhanced(path, frame_order):
    """One enhanced MR file holding the fixture's slices as frames, in ``frame_order``."""
    r, c, positions = _geometry()
    ds = _base(ENHANCED_MR_STORAGE, generate_uid(), "enhanced")
    ds.NumberOfFrames = len(frame_order)
    shared = Dataset()
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = [str(s) for s in SPACING]
    measures.SliceThickness = "2.0"
    orient.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([r, c])]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = str(SLOPE), str(INTERCEPT), "US"
    shared.PixelMeasuresSequence = [measures]
    shared.PlaneOrientationSequence = [orient]
    shared.PixelValueTransformationSequence = [transform]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in frame_order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [f"{v:.4f}" for v in positions[k]]
        item.PlanePositionSequence = [plane]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = np.stack([_raw(k) for k in frame_order]).astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_matches_series(series, tmp_path):
    path = tmp_path / "enhanced.dcm"
    _write_enhanced(path, [3, 0, 6, 1, 5, 2, 4])
    multi, single = load_dicom(path), load_dicom(series)
    np.testing.assert_array_equal(multi.data, single.data)
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-9)


def _patch_file(path, old: bytes, new: bytes) -> None:
    raw = path.read_bytes()
    assert old in raw and len(old) == len(new)
    path.write_bytes(raw.replace(old, new))


@pytest.mark.parametrize("old,new,pattern", [  # DS values are padded to an even length with a space
    (b"-10.0 ", b"abcdef", "RescaleIntercept must be a number"),
    (b"-10.0 ", b"inf   ", "RescaleIntercept must be finite"),
    (b"0.7\\1.3 ", b"-0.7\\1.3", "PixelSpacing must be positive"),
    (b"0.7\\1.3 ", b"ab.c\\d.e", "PixelSpacing"),
])
def test_unparsable_or_impossible_tags_name_the_file(tmp_path, old, new, pattern):
    _write_series(tmp_path, "1.2.3", range(N_SLICES), nested=False)
    target = tmp_path / "img003.dcm"
    _patch_file(target, old, new)
    with pytest.raises(InputError, match=pattern) as info:
        load_dicom(tmp_path)
    assert info.value.path == str(target) and "\n" not in str(info.value)


def test_a_truncated_file_in_a_series_is_not_skipped(tmp_path):
    _write_series(tmp_path, "1.2.3", range(N_SLICES), nested=False)
    target = tmp_path / "img000.dcm"
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(InputError, match="corrupt DICOM|without pixel data") as info:
        load_dicom(tmp_path)
    assert info.value.path == str(target)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_truncated.dcm"])
def test_pydicoms_broken_or_undecodable_files_give_one_line(tmp_path, name):
    import shutil
    import warnings

    shutil.copy(pydicom.data.get_testdata_file(name), tmp_path / "x.dcm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reader must not let pydicom's warnings through
        with pytest.raises(InputError) as info:
            load_volume(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
