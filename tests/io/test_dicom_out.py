"""DICOM series output: geometry and values survive the round trip, a derived series joins its input's study, and
the folder appears whole, never over anything but a DICOM series."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ldp_med.cli import cli
from ldp_med.errors import InputError
from ldp_med.io import Volume, load_dicom, load_volume, save_volume
from ldp_med.io.dicom_out import save_dicom
from ldp_med.io.volume import reorient
from tests.conftest import ellipsoid_phantom


def _affine(handed: int) -> np.ndarray:
    """Oblique, anisotropic, right- or left-handed (a slice axis along or against r x c)."""
    a, b = 0.35, -0.2
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ \
        np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.2, 2.5 * handed])
    affine[:3, 3] = [-41.5, 17.25, 33.0]
    return affine


@pytest.mark.parametrize("handed", [1, -1])
def test_a_series_reads_back_at_the_same_places_with_the_same_values(tmp_path, handed):
    data = (np.random.default_rng(0).random((11, 13, 9)) * 900 - 50).astype(np.float32)  # signed values too
    vol = Volume(data, _affine(handed), {"method": "prior"})
    out = save_volume(vol, tmp_path / "series")
    assert sorted(os.listdir(out)) == [f"IM{k:05d}.dcm" for k in range(1, 10)]
    back = load_dicom(out)
    moved, affine = reorient(back.data, back.affine, vol.affine)  # a slice axis against r x c comes back flipped
    assert np.abs(affine - vol.affine).max() < 1e-6
    step = float(pydicom.dcmread(out / "IM00001.dcm").RescaleSlope)
    assert step < 1000 / 65535 * 1.001
    assert np.abs(moved - data).max() <= step / 2 + 1e-4


def _scanner_series(folder, n=8) -> str:
    """A scanner's series (patient and study fields, an MR contrast) of n axial 9x10 slices; returns its study UID."""
    study, frame, series = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir()
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.Modality = MRImageStorage, "MR"
        ds.PatientName, ds.PatientID, ds.PatientSex = "Doe^Jane", "P-0042", "F"
        ds.StudyInstanceUID, ds.FrameOfReferenceUID, ds.SeriesInstanceUID = study, frame, series
        ds.SeriesNumber, ds.SeriesDescription, ds.EchoTime, ds.RepetitionTime = 7, "t1_mprage", "2.3", "1900"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-10.0, -12.0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [2.0, 2.0]
        pixels = (100 + 10 * ellipsoid_phantom((10, 9, n))[:, :, k] * 100).astype(np.uint16)
        ds.set_pixel_data(pixels, "MONOCHROME2", 16)
        ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)
    return study


def test_the_command_line_writes_a_derived_series_into_the_input_study(tmp_path):
    src = tmp_path / "t1"
    study = _scanner_series(src)
    out = tmp_path / "t1_denoised"
    r = CliRunner().invoke(cli, ["reconstruct", str(src), "-o", str(out), "--task", "denoise", "--method", "nlm"])
    assert r.exit_code == 0, (r.output, r.exception)
    first = pydicom.dcmread(out / "IM00001.dcm")
    assert (first.StudyInstanceUID, first.PatientID, str(first.PatientName)) == (study, "P-0042", "Doe^Jane")
    assert first.FrameOfReferenceUID == pydicom.dcmread(src / "000.dcm").FrameOfReferenceUID
    assert first.SeriesInstanceUID != pydicom.dcmread(src / "000.dcm").SeriesInstanceUID
    assert (first.SeriesNumber, list(first.ImageType), float(first.EchoTime)) == (1007, ["DERIVED", "SECONDARY"], 2.3)
    assert first.SeriesDescription == "t1_mprage ldp-med nlm"
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in out.iterdir()}) == 8
    back, given = load_volume(out), load_volume(src)
    assert np.allclose(back.affine, given.affine, atol=1e-6) and back.shape == given.shape
    # a NIfTI input gives a new study; the std map is a series of its own
    nifti = save_volume(given, tmp_path / "t1.nii.gz")
    r = CliRunner().invoke(cli, ["reconstruct", str(nifti), "-o", str(tmp_path / "from_nifti"), "--task", "denoise",
                                 "--method", "nlm"])
    assert r.exit_code == 0, (r.output, r.exception)
    other = pydicom.dcmread(tmp_path / "from_nifti" / "IM00001.dcm")
    assert other.StudyInstanceUID != study and other.PatientID == "" and other.SeriesNumber == 1000


def test_an_existing_folder_is_replaced_only_with_force_and_only_when_it_holds_a_series(tmp_path):
    vol = Volume(ellipsoid_phantom((9, 8, 7)), _affine(1))
    out = save_volume(vol, tmp_path / "s")
    stamp = (out / "IM00001.dcm").read_bytes()
    with pytest.raises(InputError, match=r"output exists \(a folder\); use --force"):
        save_volume(vol, out)
    save_volume(Volume(vol.data[:, :, :5] * 2, vol.affine), out, force=True)
    assert len(os.listdir(out)) == 5 and (out / "IM00001.dcm").read_bytes() != stamp
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me\n")
    with pytest.raises(InputError, match="holds notes.txt, not only .dcm files"):
        save_volume(vol, other, force=True)
    assert os.listdir(other) == ["notes.txt"]
    with pytest.raises(InputError, match="holds the input"):
        save_dicom(vol, tmp_path / "s", force=True, inputs=[out / "IM00001.dcm"])
    (tmp_path / "f").write_text("a file\n")
    with pytest.raises(InputError, match="is a file; a DICOM series is written to a folder"):
        save_volume(vol, tmp_path / "f", force=True)
    sheared = vol.affine.copy()
    sheared[:3, 1] += 0.2 * sheared[:3, 0]
    with pytest.raises(InputError, match="not perpendicular"):
        save_volume(Volume(vol.data, sheared), tmp_path / "sheared")
    assert not (tmp_path / "sheared").exists()


def test_a_failed_write_leaves_nothing_and_a_killed_ones_folder_is_cleared(tmp_path, monkeypatch):
    vol = Volume(ellipsoid_phantom((9, 8, 7)), _affine(1))
    calls = []

    def full_disk(self, path, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, path, **kw)

    real = Dataset.save_as
    monkeypatch.setattr(Dataset, "save_as", full_disk)
    with pytest.raises(InputError, match=r"the disk or the file size limit is full\); nothing was written"):
        save_volume(vol, tmp_path / "s")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    stale = tmp_path / ".s.999999999.0123abcd.tmp"  # no such pid: a killed writer's
    stale.mkdir()
    (stale / "IM00001.dcm").write_bytes(b"partial")
    save_volume(vol, tmp_path / "s")
    assert sorted(os.listdir(tmp_path)) == ["s"]
