"""The k-space HDF5 container: exact round trip, validation of shapes, dtypes and finiteness."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import ldp_med
from ldp_med.errors import InputError
from ldp_med.io import KSpaceData, is_kspace_file, load_kspace, save_kspace

COILS, GRID = 2, (9, 12, 10)


def _container(seed: int = 0) -> KSpaceData:
    rng = np.random.default_rng(seed)
    shape = (COILS, *GRID)
    mask = (rng.random((1, GRID[1], GRID[2])) < 0.4).astype(np.uint8)
    mask[0, GRID[1] // 2, GRID[2] // 2] = 1
    kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64) * mask
    maps = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    affine[:3, 3] = [-4.0, 5.5, 10.0]
    attrs = {"task": "kspace", "acceleration": 2.5, "mask_kind": "poisson", "noise_std": 0.01,
             "seed": 7, "scale": 123.5, "site": "test"}
    return KSpaceData(kspace=kspace, mask=mask, sensitivity_maps=maps,
                      reference=rng.random(GRID, dtype=np.float32), affine=affine, attrs=attrs)


def _write_raw(path, **datasets) -> None:
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)


def test_round_trip(tmp_path):
    data = _container()
    attrs_before = dict(data.attrs)
    out = save_kspace(data, tmp_path / "k.h5")
    assert data.attrs == attrs_before  # save does not touch its argument
    back = load_kspace(out)
    for name in ("kspace", "mask", "sensitivity_maps", "reference", "affine"):
        got, want = getattr(back, name), getattr(data, name)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert back.kspace.dtype == np.complex64 and back.mask.dtype == np.uint8
    assert back.attrs["ldp_med_version"] == ldp_med.__version__
    for key, value in data.attrs.items():
        assert back.attrs[key] == value, key
    assert isinstance(back.attrs["seed"], int) and isinstance(back.attrs["scale"], float)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.h5"]  # no temporary left behind


def test_optional_fields_and_defaults(tmp_path):
    data = _container()
    mask = data.mask
    _write_raw(tmp_path / "min.h5", kspace=data.kspace.astype(np.complex128), mask=mask.astype(bool))
    back = load_kspace(tmp_path / "min.h5")
    assert back.kspace.dtype == np.complex64 and back.mask.dtype == np.uint8
    assert back.sensitivity_maps is None and back.reference is None
    np.testing.assert_array_equal(back.affine, np.eye(4))
    assert back.attrs["noise_std"] is None and back.attrs["seed"] is None
    assert back.attrs["scale"] == 1.0 and back.attrs["task"] == "kspace"
    assert back.attrs["acceleration"] == pytest.approx(GRID[1] * GRID[2] / mask.sum())


@pytest.mark.parametrize("field, value, pattern", [
    ("mask", np.ones((1, 11, 10), np.uint8),
     r"mask shape \(1, 11, 10\) does not broadcast to the k-space grid \(9, 12, 10\)"),
    ("sensitivity_maps", np.ones((3, *GRID), np.complex64), "sensitivity_maps shape .* differs from kspace shape"),
    ("reference", np.ones((9, 12, 11), np.float32), r"reference shape \(9, 12, 11\) differs"),
    ("mask", np.full((1, 12, 10), 0.5), "mask is float64"),
    ("affine", np.eye(3), "affine must be a real"),
])
def test_shape_and_dtype_mismatches(tmp_path, field, value, pattern):
    data = _container()
    setattr(data, field, value)
    with pytest.raises(InputError, match=pattern):
        save_kspace(data, tmp_path / "bad.h5")
    assert list(tmp_path.iterdir()) == []
    data = _container()
    raw = {name: getattr(data, name) for name in ("kspace", "mask", "sensitivity_maps", "reference", "affine")}
    raw[field] = value
    _write_raw(tmp_path / "bad.h5", **raw)
    with pytest.raises(InputError, match=pattern) as info:
        load_kspace(tmp_path / "bad.h5")
    assert str(info.value).startswith(str(tmp_path / "bad.h5"))


def test_real_valued_kspace_is_rejected(tmp_path):
    data = _container()
    stacked = np.stack([data.kspace.real, data.kspace.imag], axis=-1)
    _write_raw(tmp_path / "real.h5", kspace=stacked, mask=data.mask)
    with pytest.raises(InputError, match="expected complex64.*trailing axis of 2"):
        load_kspace(tmp_path / "real.h5")


def test_nan_in_kspace(tmp_path):
    data = _container()
    data.kspace[0, 1, 2, 3] = np.nan
    with pytest.raises(InputError, match="kspace has 1 NaN/Inf"):
        save_kspace(data, tmp_path / "nan.h5")
    _write_raw(tmp_path / "nan.h5", kspace=data.kspace, mask=data.mask)
    with pytest.raises(InputError, match="kspace has 1 NaN/Inf"):
        load_kspace(tmp_path / "nan.h5")


def test_not_hdf5_and_missing_dataset(tmp_path):
    fake = tmp_path / "fake.h5"
    fake.write_text("this is not HDF5\n")
    with pytest.raises(InputError, match="not an HDF5 file"):
        load_kspace(fake)
    with pytest.raises(InputError, match="file not found"):
        load_kspace(tmp_path / "missing.h5")
    _write_raw(tmp_path / "nomask.h5", kspace=_container().kspace)
    with pytest.raises(InputError, match="dataset 'mask' missing"):
        load_kspace(tmp_path / "nomask.h5")


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "k.h5"
    save_kspace(_container(0), out)
    with pytest.raises(InputError, match="output exists"):
        save_kspace(_container(1), out)
    save_kspace(_container(1), out, force=True)
    np.testing.assert_array_equal(load_kspace(out).kspace, _container(1).kspace)


def test_is_kspace_file():
    assert is_kspace_file("a/b.h5") and is_kspace_file("x.HDF5")
    assert not is_kspace_file("x.nii.gz")


@pytest.mark.parametrize("change, pattern", [
    (lambda f: f.__setitem__("kspace", np.zeros((COILS, *GRID), np.complex64)), "kspace is zero everywhere"),
    (lambda f: f.__setitem__("sensitivity_maps", np.zeros((COILS, *GRID), np.complex64)),
     "sensitivity_maps is zero everywhere"),
    (lambda f: f.__setitem__("affine", np.zeros((4, 4))), "affine is singular"),
    (lambda f: f.attrs.__setitem__("calib", 500), "attribute calib = 500 must be from 0 to 12"),
    (lambda f: f.attrs.__setitem__("calib", -3), "attribute calib = -3"),
    (lambda f: f.attrs.__setitem__("calib", 2.5), "attribute calib must be an integer"),
    (lambda f: f.attrs.__setitem__("seed", 1.5), "attribute seed must be an integer"),
    (lambda f: f.attrs.__setitem__("seed", "abc"), "attribute seed must be an integer"),
])
def test_contents_that_carry_no_image_or_contradict_the_grid(tmp_path, change, pattern):
    path = save_kspace(_container(), tmp_path / "c.h5")
    with h5py.File(path, "a") as f:
        for name in ("kspace", "sensitivity_maps", "affine"):
            if pattern.startswith(name):
                del f[name]
        change(f)
    with pytest.raises(InputError, match=pattern) as info:
        load_kspace(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_a_grid_too_small_for_any_method_is_refused(tmp_path):
    data = _container()
    small = KSpaceData(data.kspace[:, :4, :4, :4], np.ones((1, 4, 4), np.uint8))
    path = save_kspace(small, tmp_path / "s.h5")
    with pytest.raises(InputError, match=r"k-space grid too small \(4x4x4\)"):
        load_kspace(path)
    assert load_kspace(path, min_size=1).shape == (4, 4, 4)
