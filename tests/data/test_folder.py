"""Folder datasets (ldp_med.data.folder): listing, loading onto the model grid, the persistent cache."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import ldp_med.data.folder as folder_mod
from ldp_med.config import ModelConfig
from ldp_med.data.folder import folder_cache_dir, list_scans, load_folder
from ldp_med.errors import InputError
from tests.conftest import ellipsoid_phantom, oblique_affine

CFG = ModelConfig(grid=(24, 28, 20), voxel_mm=3.0)
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _nifti(path, scale=200.0, affine=None, data=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ellipsoid_phantom() * scale if data is None else data
    nib.save(nib.Nifti1Image(data.astype(np.float32), oblique_affine() if affine is None else affine), str(path))
    return path


def _dicom_series(folder, n_slices=5, rows=10, cols=12):
    """An axial series of ``n_slices`` files (one in a subfolder), 1 x 1.5 mm pixels, 2.5 mm apart."""
    uid = generate_uid()
    vol = (ellipsoid_phantom((cols, rows, n_slices)) * 1000).astype(np.uint16)
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MR_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", uid, "t1"
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = ["-6.0", "-7.5", f"{2.5 * k:.1f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["1.5", "1.0"]
        ds.SliceThickness = "2.5"
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).astype("<u2").tobytes()
        path = (folder / "echo" if k == 2 else folder) / f"IM{k:04d}"  # no suffix: found by the DICM marker
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return folder


@pytest.fixture
def scans(tmp_path):
    root = tmp_path / "scans"
    a = _nifti(root / "a.nii.gz")
    b = _nifti(root / "site2" / "b.nii", scale=1000.0, affine=np.diag([-1.2, 0.9, 3.0, 1.0]))
    series = _dicom_series(root / "site2" / "subj3" / "t1")
    (root / "site2" / "notes.txt").write_text("not a scan\n")
    (root / "a.json").write_text("{}")  # a sidecar, ignored
    _nifti(root / ".trash" / "old.nii.gz")  # hidden: skipped
    return root, [a, b, series]


def test_list_scans_from_a_folder(scans):
    root, expected = scans
    assert list_scans(root) == sorted(expected)


def test_list_scans_from_csv_and_json_resolves_relative_paths(scans, tmp_path):
    root, (a, b, series) = scans
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text(f"subject,image\ns1,../scans/a.nii.gz\ns2,{b}\ns3,../scans/site2/subj3/t1\n")
    assert [p.resolve() for p in list_scans(lists / "train.csv")] == [a.resolve(), b.resolve(), series.resolve()]
    (lists / "plain.json").write_text(json.dumps(["../scans/a.nii.gz", str(b)]))
    assert [p.resolve() for p in list_scans(lists / "plain.json")] == [a.resolve(), b.resolve()]
    (lists / "dicts.json").write_text(json.dumps([{"image": "../scans/site2/b.nii", "label": 0}]))
    assert [p.resolve() for p in list_scans(lists / "dicts.json")] == [b.resolve()]


def test_list_scans_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no scans"):
        list_scans(empty)
    with pytest.raises(InputError, match="not found"):
        list_scans(tmp_path / "missing")
    (tmp_path / "empty.csv").write_text("image\n")
    with pytest.raises(InputError, match="empty"):
        list_scans(tmp_path / "empty.csv")
    (tmp_path / "nocol.csv").write_text("path\nx.nii\n")
    with pytest.raises(InputError, match="column 'image'"):
        list_scans(tmp_path / "nocol.csv")
    (tmp_path / "gone.json").write_text(json.dumps(["gone.nii.gz"]))
    with pytest.raises(InputError, match="gone.nii.gz"):
        list_scans(tmp_path / "gone.json")
    (tmp_path / "obj.json").write_text(json.dumps({"image": "x.nii"}))
    with pytest.raises(InputError, match="list"):
        list_scans(tmp_path / "obj.json")
    (tmp_path / "scans.txt").write_text("x.nii\n")
    with pytest.raises(InputError, match="expected a folder"):
        list_scans(tmp_path / "scans.txt")


def test_load_folder_is_cached_and_not_re_read(scans, tmp_path, monkeypatch):
    root, expected = scans
    cache = tmp_path / "cache"
    x = load_folder(root, CFG, cache, progress=False)
    assert x.shape == (3, *CFG.grid) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and np.all(x.reshape(3, -1).max(1) > 0.9)

    cached = sorted(folder_cache_dir(cache, CFG).glob("*.pt"))
    assert folder_cache_dir(cache, CFG).name.startswith("folder-") and len(cached) == 3

    def no_reading(path, *args, **kwargs):
        raise AssertionError(f"re-read {path}")

    with monkeypatch.context() as m:
        m.setattr(folder_mod, "load_volume", no_reading)
        again = load_folder(root, CFG, cache, progress=False)
    np.testing.assert_array_equal(again, x)

    # A changed file is re-read (its size/mtime is part of the cache key); the others are not.
    _nifti(root / "a.nii.gz", data=np.roll(ellipsoid_phantom(), 3, axis=0) * 50.0)
    third = load_folder(root, CFG, cache, progress=False)
    i = sorted(expected).index(root / "a.nii.gz")
    assert not np.array_equal(third[i], x[i])
    np.testing.assert_array_equal(np.delete(third, i, 0), np.delete(x, i, 0))


def test_a_bad_file_is_named(tmp_path):
    root = tmp_path / "scans"
    _nifti(root / "good.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"definitely not gzip" * 10)
    with pytest.raises(InputError, match="broken.nii.gz"):
        load_folder(root, CFG, tmp_path / "cache", progress=False)
    (root / "broken.nii.gz").unlink()
    _nifti(root / "flat.nii.gz", data=np.full((7, 8, 9), 5.0))
    with pytest.raises(InputError, match="flat.nii.gz.*constant"):
        load_folder(root, CFG, tmp_path / "cache", progress=False)
