"""NIfTI reading/writing: exact geometry round trips, 4-D handling, and one-line errors for bad files."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from ldp_med.errors import InputError
from ldp_med.io import Volume, check_volume_array, load_nifti, load_volume, save_nifti, save_volume
from ldp_med.io.loaders import volume_stem
from tests.conftest import ellipsoid_phantom, oblique_affine

SHAPE = (9, 12, 10)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


ZOOMS = np.array([0.9, 1.1, 2.5])
# qform: oblique rotation times anisotropic zooms (a qform cannot hold shears).
QFORM = np.eye(4)
QFORM[:3, :3] = _rotation(0.3, -0.2, 0.5) * ZOOMS
QFORM[:3, 3] = [-10.0, 20.0, 30.0]
# sform: a different, sheared oblique matrix (NIfTI allows any affine there).
SFORM = np.array([
    [0.9, 0.2, 0.1, -8.0],
    [-0.1, 1.1, 0.3, 17.0],
    [0.05, -0.2, 2.5, 31.5],
    [0.0, 0.0, 0.0, 1.0],
])


def _data(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32) * 100


def _write(path, data, qform=QFORM, sform=SFORM, qcode=1, scode=4):
    img = nib.Nifti1Image(data, None)
    img.header.set_qform(qform, code=qcode)
    img.header.set_sform(sform, code=scode)
    img.to_filename(path)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def oblique(tmp_path):
    return _write(tmp_path / "in.nii.gz", _data())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_round_trip_is_exact(tmp_path, suffix):
    src = _write(tmp_path / f"in{suffix}", _data())
    first = load_nifti(src)
    assert first.data.dtype == np.float32 and first.shape == SHAPE
    np.testing.assert_allclose(first.affine, SFORM, atol=1e-5)  # sform wins (code 4 > 0)
    assert (first.meta["qform_code"], first.meta["sform_code"]) == (1, 4)
    np.testing.assert_allclose(first.meta["zooms"], ZOOMS, rtol=1e-6)

    out = save_nifti(first, tmp_path / f"out{suffix}")
    second = load_nifti(out)
    np.testing.assert_array_equal(second.data, first.data)
    np.testing.assert_array_equal(second.affine, first.affine)
    np.testing.assert_array_equal(second.meta["qform"], first.meta["qform"])
    np.testing.assert_array_equal(second.meta["sform"], first.meta["sform"])
    assert second.meta["zooms"] == first.meta["zooms"]
    assert (second.meta["qform_code"], second.meta["sform_code"]) == (1, 4)
    assert nib.load(src).header.binaryblock == nib.load(out).header.binaryblock


def test_qform_only_file_round_trips(tmp_path):
    src = _write(tmp_path / "q.nii.gz", _data(), sform=np.zeros((4, 4)), qcode=2, scode=0)
    first = load_nifti(src)
    np.testing.assert_allclose(first.affine, QFORM, atol=1e-5)
    second = load_nifti(save_nifti(first, tmp_path / "q2.nii.gz"))
    np.testing.assert_array_equal(second.affine, first.affine)
    assert (second.meta["qform_code"], second.meta["sform_code"]) == (2, 0)


def test_volume_without_meta_gets_scanner_codes(tmp_path):
    vol = Volume(_data(), SFORM)
    back = load_nifti(save_nifti(vol, tmp_path / "v.nii.gz"))
    assert (back.meta["qform_code"], back.meta["sform_code"]) == (1, 1)
    np.testing.assert_allclose(back.affine, SFORM, atol=1e-5)
    np.testing.assert_allclose(back.voxel_sizes, vol.voxel_sizes, rtol=1e-6)


def test_stale_meta_is_ignored(oblique, tmp_path):
    vol = load_nifti(oblique)
    vol.affine = np.diag([2.0, 3.0, 4.0, 1.0])  # e.g. resampled; meta still describes the old grid
    back = load_nifti(save_nifti(vol, tmp_path / "r.nii.gz"))
    np.testing.assert_array_equal(back.affine, vol.affine)
    assert (back.meta["qform_code"], back.meta["sform_code"]) == (1, 1)


def test_scaling_is_applied(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) % 300
    img = nib.Nifti1Image(raw, np.eye(4), dtype=np.int16)
    img.header.set_slope_inter(2.0, -10.0)
    img.to_filename(tmp_path / "s.nii.gz")
    vol = load_nifti(tmp_path / "s.nii.gz")
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, raw.astype(np.float32) * 2 - 10)


def test_4d_needs_an_index(tmp_path):
    data = np.stack([_data(seed=s) for s in range(3)], axis=-1)
    path = _write(tmp_path / "f.nii.gz", data)
    with pytest.raises(InputError, match=r"4-D data with 3 volumes; pick one with --volume-index N \(volume_index=N in Python\), N from 0 to 2"):
        load_nifti(path)
    vol = load_nifti(path, volume_index=2)
    np.testing.assert_array_equal(vol.data, data[..., 2])
    assert vol.meta["volume_index"] == 2
    with pytest.raises(InputError, match="out of range"):
        load_nifti(path, volume_index=3)
    with pytest.raises(InputError, match=">= 0"):
        load_nifti(path, volume_index=-1)


def test_trailing_singleton_is_3d(tmp_path):
    data = _data()[..., None]
    vol = load_nifti(_write(tmp_path / "t.nii.gz", data))
    assert vol.shape == SHAPE
    assert load_nifti(tmp_path / "t.nii.gz", volume_index=0).shape == SHAPE
    with pytest.raises(InputError, match="out of range"):
        load_nifti(tmp_path / "t.nii.gz", volume_index=1)


@pytest.mark.parametrize("name", ["fake.nii.gz", "fake.nii"])
def test_text_file_posing_as_nifti(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(InputError, match="not a readable NIfTI file") as info:
        load_nifti(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file(tmp_path, suffix):
    good = _write(tmp_path / f"good{suffix}", _data())
    bad = tmp_path / f"bad{suffix}"
    blob = good.read_bytes()
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InputError, match="truncated") as info:
        load_nifti(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_nan_voxel(tmp_path):
    data = _data()
    data[1, 2, 3] = np.nan
    data[4, 5, 6] = np.inf
    with pytest.raises(InputError, match="1 NaN and 1 Inf values"):
        load_nifti(_write(tmp_path / "n.nii.gz", data))


def test_empty_dimension(tmp_path):
    with pytest.raises(InputError, match="size 0"):
        load_nifti(_write(tmp_path / "e.nii.gz", np.zeros((9, 0, 10), np.float32)))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_nifti(tmp_path / "nope.nii.gz")
    folder = tmp_path / "dir.nii"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_nifti(folder)


def test_existing_output_needs_force(oblique, tmp_path):
    vol = load_nifti(oblique)
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="output exists"):
        save_nifti(vol, out)
    assert out.read_bytes() == b"old"
    save_nifti(vol, out, force=True)
    np.testing.assert_array_equal(load_nifti(out).data, vol.data)


def test_input_never_modified_and_no_temp_files(oblique, tmp_path):
    before = _sha(oblique)
    vol = load_nifti(oblique)
    save_nifti(vol, tmp_path / "out.nii.gz")
    with pytest.raises(InputError, match="output exists"):
        save_nifti(vol, oblique)
    assert _sha(oblique) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "out.nii.gz"]


def test_save_rejects_non_finite_and_writes_nothing(tmp_path):
    data = _data()
    data[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        save_nifti(Volume(data, np.eye(4)), tmp_path / "n.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_bad_suffix(tmp_path):
    with pytest.raises(InputError, match=r"\.nii or \.nii\.gz"):
        save_nifti(Volume(_data(), np.eye(4)), tmp_path / "out.img")


def test_check_volume_array_rejects_bad_arrays():
    with pytest.raises(InputError, match="complex"):
        check_volume_array(np.zeros(SHAPE, np.complex64), "x")
    with pytest.raises(InputError, match="non-numeric"):
        check_volume_array(np.full(SHAPE, "a"), "x")
    with pytest.raises(InputError, match="expected 3-D"):
        check_volume_array(np.zeros((4, 4)), "x")
    assert check_volume_array(np.ones(SHAPE, np.int16), "x").dtype == np.float32


def test_load_volume_dispatch(oblique, tmp_path):
    assert load_volume(oblique).meta["format"] == "nifti"
    other = tmp_path / "scan.raw"
    other.write_bytes(b"\0" * 400)
    with pytest.raises(InputError, match="unrecognised format"):
        load_volume(other)
    h5 = tmp_path / "k.h5"
    h5.write_bytes(b"\0")
    with pytest.raises(InputError, match="load_kspace"):
        load_volume(h5)


def _raw_nifti(path, shape=SHAPE, **fields):
    """A .nii / .nii.gz whose header fields are set raw (nibabel's checks bypassed); int16 data of ``SHAPE``."""
    import gzip

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(SHAPE)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    if shape != SHAPE:
        hdr.structarr["dim"][1:4] = shape
    for name, value in fields.items():
        hdr.structarr[name] = value
    data = (np.arange(np.prod(SHAPE)) % 500).astype(np.int16).reshape(SHAPE)
    raw = hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F")
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path, data


@pytest.mark.parametrize("slope", [0.0, float("nan")])
def test_scl_slope_zero_or_nan_means_unscaled(tmp_path, slope):
    path, data = _raw_nifti(tmp_path / "s.nii.gz", scl_slope=slope, scl_inter=5.0)
    np.testing.assert_array_equal(load_nifti(path).data, data.astype(np.float32))


@pytest.mark.parametrize("name", ["big.nii", "big.nii.gz"])
def test_huge_header_dims_fail_before_allocating(tmp_path, name):
    import tracemalloc

    path, _ = _raw_nifti(tmp_path / name, shape=(4000, 4000, 4000))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"header promises 4000x4000x4000 int16 .* truncated, or wrong dim"):
            load_nifti(path)
        assert tracemalloc.get_traced_memory()[1] < 50e6
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("field,value,needle", [
    ("sizeof_hdr", 347, "sizeof_hdr"),
    ("magic", b"ni1", ".hdr/.img pair"),
    ("vox_offset", 100.0, "vox_offset = 100"),
    ("vox_offset", float("inf"), "vox_offset = inf"),
    ("qform_code", 99, "qform_code = 99"),
    ("sform_code", -1, "sform_code = -1"),
    ("scl_slope", float("inf"), "scl_slope = inf"),
    ("datatype", 999, "datatype code 999"),
])
def test_header_fields_nibabel_would_fix_are_rejected(tmp_path, field, value, needle):
    path, _ = _raw_nifti(tmp_path / "h.nii", **{field: value})
    with pytest.raises(InputError, match=needle) as info:
        load_nifti(path)
    assert "\n" not in str(info.value)


def test_pixdim_zero_without_transforms_is_rejected(tmp_path):
    path, _ = _raw_nifti(tmp_path / "p.nii", qform_code=0, sform_code=0)
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(0.0).tobytes()  # pixdim[1]
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"pixdim\[1\] = 0"):
        load_nifti(path)


@pytest.mark.parametrize("where", [-1, -6, 0.5])
def test_a_damaged_gzip_stream_is_caught_by_its_checksum(tmp_path, where):
    path, _ = _raw_nifti(tmp_path / "g.nii.gz")
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * where) if isinstance(where, float) else len(raw) + where
    raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="corrupt or truncated gzip|not a readable NIfTI"):
        load_nifti(path)


@pytest.mark.parametrize("data,needle", [
    (np.zeros(SHAPE, np.float32), "constant intensity"),
    (np.ones((2, 2, 2), np.float32) * np.arange(2), r"volume too small \(2x2x2\)"),
    (_data()[:, :, :1], r"volume too small \(9x12x1\)"),
])
def test_load_volume_refuses_constant_and_tiny_volumes(tmp_path, data, needle):
    path = _write(tmp_path / "v.nii.gz", data)
    load_nifti(path)  # the reader itself reads it; load_volume (what commands use) refuses it
    with pytest.raises(InputError, match=needle):
        load_volume(path)


def test_a_nifti_pair_reads_as_its_single_file_and_bad_pairs_give_one_line(tmp_path):
    data = (ellipsoid_phantom((9, 8, 7)) * 300).astype(np.int16)
    nib.save(nib.Nifti1Image(data, oblique_affine()), tmp_path / "one.nii")
    single = load_volume(tmp_path / "one.nii")
    for name in ("pair.hdr", "pair.img", "gz.hdr.gz", "gz.img.gz", "CAPS.HDR"):
        path = tmp_path / name
        if not path.exists():
            nib.save(nib.Nifti1Pair(data, oblique_affine()), path)
        vol = load_volume(path)
        assert np.array_equal(vol.data, single.data) and np.allclose(vol.affine, single.affine)
        assert vol.meta["source"] == str(path)
    assert volume_stem("scan.img.gz") == "scan" and volume_stem("scan.hdr") == "scan"
    (tmp_path / "lost.hdr").write_bytes((tmp_path / "pair.hdr").read_bytes())
    (tmp_path / "cut.hdr").write_bytes((tmp_path / "pair.hdr").read_bytes())
    (tmp_path / "cut.img").write_bytes((tmp_path / "pair.img").read_bytes()[:200])
    nib.save(nib.AnalyzeImage(data, np.eye(4)), tmp_path / "analyze.hdr")
    nib.save(nib.Nifti1Image(data, oblique_affine()), tmp_path / "single_in.nii")
    (tmp_path / "single.hdr").write_bytes((tmp_path / "single_in.nii").read_bytes()[:348])
    (tmp_path / "single.img").write_bytes(data.tobytes(order="F"))
    for name, message in [("lost.hdr", "lost.img, the other file of this NIfTI pair, is missing"),
                          ("cut.img", "header promises 9x8x7 int16 .* the file holds 200 bytes"),
                          ("analyze.img", "an Analyze 7.5 header \\(no NIfTI magic\\)"),
                          ("single.hdr", "header magic 'n\\+1' belongs to a single-file NIfTI")]:
        with pytest.raises(InputError, match=message) as info:
            load_volume(tmp_path / name)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="output must end in"):
        save_volume(single, tmp_path / "out.img")
