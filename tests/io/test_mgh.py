"""FreeSurfer MGH/MGZ: nibabel's reading, the header written back field for field, geometry from an affine, the
command line in and out of .mgz. Bad files are in the bad-input corpus (tests/fuzz, kind ``mgz``)."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ldp_med.cli import cli
from ldp_med.errors import InputError
from ldp_med.io import Volume, load_volume
from ldp_med.io.loaders import save_volume, volume_stem
from ldp_med.io.mgh import load_mgh, save_mgh
from ldp_med.pipeline import std_path
from tests.conftest import ellipsoid_phantom, oblique_affine

FIELDS = ("delta", "Mdc", "Pxyz_c", "tr", "flip_angle", "te", "ti", "fov")


def _oblique_mgz(path, frames=2):
    """A rotated, anisotropic 4-D int16 MGZ with scan parameters, as FreeSurfer would write it."""
    data = np.stack([ellipsoid_phantom() * 300 + 7 * f for f in range(frames)], -1).astype(np.int16)
    data = data[..., 0] if frames == 1 else data
    img = nib.MGHImage(data, oblique_affine())
    img.header["tr"], img.header["te"], img.header["flip_angle"] = 2300.0, 2.98, 0.157
    nib.save(img, str(path))
    return path


def test_an_mgz_frame_loads_as_nibabel_reads_it_and_saves_back_the_same_header(tmp_path):
    src = _oblique_mgz(tmp_path / "orig.mgz")
    vol = load_mgh(src, volume_index=1)
    ref = nib.load(str(src))
    assert np.array_equal(vol.data, ref.get_fdata()[..., 1].astype(np.float32))
    assert np.array_equal(vol.affine, ref.affine) and vol.meta["format"] == "mgh" and vol.meta["volume_index"] == 1
    assert np.allclose(vol.affine, oblique_affine(), atol=1e-4)
    out = save_mgh(vol, tmp_path / "copy.mgz")
    back = nib.load(str(out))
    for k in FIELDS:  # the stored float32 fields, not a float64 affine recomputed from them
        assert np.array_equal(back.header[k], ref.header[k]), k
    assert np.array_equal(back.get_fdata(dtype=np.float32), vol.data) and np.array_equal(back.affine, ref.affine)
    assert back.get_data_dtype() == np.dtype(">f4")
    with pytest.raises(InputError, match="4-D data with 2 volumes"):
        load_volume(src)


def test_a_volume_from_elsewhere_is_written_with_its_own_affine(tmp_path):
    vol = Volume(ellipsoid_phantom(), oblique_affine(), {"format": "nifti", "mgh": {"delta": [9, 9, 9]}})
    for name in ("a.mgh", "a.mgz"):
        back = load_volume(save_volume(vol, tmp_path / name))
        assert np.allclose(back.affine, oblique_affine(), rtol=0, atol=1e-5)  # float32 header fields
        assert np.array_equal(back.data, vol.data)
    assert (tmp_path / "a.mgz").read_bytes()[:2] == b"\x1f\x8b" and (tmp_path / "a.mgh").read_bytes()[:4] == b"\0\0\0\1"
    moved = load_mgh(tmp_path / "a.mgh")
    moved.affine = moved.affine @ np.diag([2.0, 1, 1, 1])  # the stored fields no longer describe it: derived anew
    assert np.allclose(load_mgh(save_mgh(moved, tmp_path / "b.mgh")).affine, moved.affine, atol=1e-5)


def test_an_mgh_without_its_geometry_flag_gets_freesurfers_coronal_default(tmp_path):
    path = tmp_path / "flagless.mgh"
    nib.save(nib.MGHImage(ellipsoid_phantom(), oblique_affine()), str(path))
    raw = bytearray(path.read_bytes())
    raw[28:30] = b"\0\0"  # goodRASFlag
    path.write_bytes(raw)
    vol = load_mgh(path)
    assert nib.aff2axcodes(vol.affine) == ("L", "I", "A")  # what FreeSurfer's mghRead assumes (nibabel: L, S, P)
    assert np.array_equal(vol.affine[:3, :3], [[-1, 0, 0], [0, 0, 1], [0, -1, 0]]) 
    assert np.array_equal(vol.affine @ [*np.array(vol.shape) / 2, 1], [0, 0, 0, 1])  # centred at 0
    assert np.array_equal(load_mgh(save_mgh(vol, tmp_path / "flagged.mgh")).affine, vol.affine)


def test_names_the_std_map_and_outputs_follow_the_volume_suffix():
    assert std_path(tmp := __import__("pathlib").Path("out/brain.mgz")) == tmp.with_name("brain_std.mgz")
    assert [volume_stem(n) for n in ("a.nii.gz", "b.mgz", "c.MGH", "d.h5", "e.txt")] == ["a", "b", "c", "d", "e.txt"]
    with pytest.raises(InputError, match=r"output must end in \.nii, \.nii\.gz, \.mgh or \.mgz"):
        save_volume(Volume(ellipsoid_phantom()), "x.img")


def test_the_command_line_denoises_an_mgz_into_mgz_and_nifti_on_the_same_grid(tmp_path):
    src = _oblique_mgz(tmp_path / "T1.mgz", frames=1)
    before = gzip.decompress(src.read_bytes())
    for name in ("T1_nlm.mgz", "T1_nlm.nii.gz"):
        r = CliRunner().invoke(cli, ["reconstruct", str(src), "-o", str(tmp_path / name), "--task", "denoise",
                                     "--method", "nlm"])
        assert r.exit_code == 0, (r.output, r.exception)
        out = load_volume(tmp_path / name)
        assert np.allclose(out.affine, load_volume(src).affine, atol=1e-5) and out.shape == load_volume(src).shape
    assert gzip.decompress(src.read_bytes()) == before
    r = CliRunner().invoke(cli, ["autoencode", str(src), "-o", str(tmp_path / "ae.img")])
    assert r.exit_code == 2 and "output must end in" in r.stderr


def test_a_folder_of_outputs_keeps_an_mgz_input_in_its_format(tmp_path, phantom_nifti):
    src = _oblique_mgz(tmp_path / "a.mgz", frames=1)
    out = tmp_path / "out"
    out.mkdir()
    r = CliRunner().invoke(cli, ["reconstruct", str(src), str(phantom_nifti), "-o", str(out), "--task", "denoise",
                                 "--method", "nlm"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert sorted(p.name for p in out.iterdir()) == ["a.mgz", "phantom.nii.gz"]
    assert np.allclose(load_volume(out / "a.mgz").affine, load_volume(src).affine, atol=1e-5)
