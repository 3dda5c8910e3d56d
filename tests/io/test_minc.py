"""MINC input: MINC1 (plain and gzip-compressed, as BrainWeb ships its phantoms) and MINC2, any dimension order,
oblique cosines and negative steps placed where MINC's definition puts them, a time dimension anywhere, bad files in
one line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ldp_med.cli import cli
from ldp_med.errors import InputError
from ldp_med.io import load_volume
from tests.conftest import ellipsoid_phantom
from tests.fuzz.corpus import MINC_COSINES, MINC_STARTS, MINC_STEPS, minc1_bytes

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
COSINES, STEPS, STARTS = MINC_COSINES, MINC_STEPS, MINC_STARTS


def write_minc1(path: Path, stored: np.ndarray, names: tuple[str, ...], lo: np.ndarray, hi: np.ndarray) -> Path:
    """:func:`tests.fuzz.corpus.minc1_bytes` written to ``path`` (gzip-compressed for ``.gz``)."""
    raw = minc1_bytes(stored, names, lo, hi)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _world(index: dict[str, int]) -> np.ndarray:
    """MINC's definition: the sum over spatial dimensions of (start + index * step) times the dimension's cosine."""
    return sum((STARTS[n] + index[n] * STEPS[n]) * COSINES[n] for n in COSINES)


def _stored(shape) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)


@pytest.mark.parametrize("names", [("zspace", "yspace", "xspace"), ("xspace", "zspace", "yspace")])
@pytest.mark.parametrize("suffix", [".mnc", ".mnc.gz"])
def test_minc1_voxels_lie_where_mincs_definition_puts_them_with_their_real_values(tmp_path, names, suffix):
    shape = (7, 9, 8)
    stored = _stored(shape)
    lo, hi = np.linspace(-5, 0, shape[0]), np.linspace(100, 200, shape[0])
    vol = load_volume(write_minc1(tmp_path / f"t1{suffix}", stored, names, lo, hi))
    assert vol.shape == shape and vol.meta["dimensions"] == list(names) and vol.meta["format"] == "minc"
    for idx in [(0, 0, 0), (6, 8, 7), (3, 1, 5)]:
        world = vol.affine @ [*idx, 1]
        assert np.allclose(world[:3], _world(dict(zip(names, idx))), atol=1e-9)
        real = lo[idx[0]] + stored[idx] / 255.0 * (hi[idx[0]] - lo[idx[0]])  # MINC's valid range -> slice range
        assert vol.data[idx] == pytest.approx(real, rel=1e-5, abs=1e-4)


def test_a_time_dimension_first_or_between_is_the_volume_index(tmp_path):
    for names in [("time", "zspace", "yspace", "xspace"), ("zspace", "time", "yspace", "xspace")]:
        stored = _stored((3, 8, 9, 7) if names[0] == "time" else (8, 3, 9, 7))
        lo, hi = np.zeros(stored.shape[0]), np.full(stored.shape[0], 255.0)
        path = write_minc1(tmp_path / f"{names[0]}.mnc", stored, names, lo, hi)
        with pytest.raises(InputError, match="4-D data with 3 volumes; pick one with --volume-index N"):
            load_volume(path)
        vol = load_volume(path, volume_index=2)
        assert vol.shape == (8, 9, 7) and vol.meta["volume_index"] == 2
        assert np.array_equal(vol.data, np.take(stored, 2, axis=names.index("time")).astype(np.float32))
        assert np.allclose(vol.affine @ [1, 2, 3, 1], [*_world({names[i]: v for i, v in
                                                               zip([n for n in range(4) if names[n] != "time"],
                                                                   (1, 2, 3))}), 1])
        with pytest.raises(InputError, match="volume index 3 out of range for 4-D data with 3 volumes"):
            load_volume(path, volume_index=3)


def test_nibabels_minc2_files_read_as_nibabel_reads_them():
    for name, index in [("small.mnc", None), ("minc2_4d.mnc", 1), ("minc2_1_scale.mnc", None)]:
        img = nib.load(NIBABEL_DATA / name)
        vol = load_volume(NIBABEL_DATA / name, volume_index=index)
        expected = img.get_fdata() if index is None else img.get_fdata()[index]
        assert np.allclose(vol.data, expected, rtol=1e-6) and np.allclose(vol.affine, img.affine)


def test_bad_minc_files_give_one_line(tmp_path):
    good = write_minc1(tmp_path / "good.mnc", _stored((7, 8, 9)), ("zspace", "yspace", "xspace"), np.zeros(7),
                       np.ones(7))
    raw = good.read_bytes()
    cases = {
        "cut.mnc": (raw[: len(raw) - 200], "not a readable MINC file|cannot read the image data"),
        "text.mnc": (b"hello, not a volume\n" * 10, "not a MINC file"),
        "cut.mnc.gz": (gzip.compress(raw)[:-30], "corrupt or truncated gzip data"),
        "minc2.mnc.gz": (gzip.compress((NIBABEL_DATA / "small.mnc").read_bytes()), "gzip-compressed MINC2"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message) as info:
            load_volume(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(InputError, match="volume index 1 out of range: the data is 3-D"):
        load_volume(good, volume_index=1)
    huge = tmp_path / "huge.mnc"  # a MINC2 image dataset declared 29 GB with nothing stored: refused, not filled
    huge.write_bytes((NIBABEL_DATA / "small.mnc").read_bytes())
    with h5py.File(huge, "r+") as f:
        attrs = dict(f["minc-2.0/image/0/image"].attrs)
        del f["minc-2.0/image/0/image"]
        f.create_dataset("minc-2.0/image/0/image", shape=(1800, 2800, 2900), dtype="i2", chunks=(16, 16, 16))
        f["minc-2.0/image/0/image"].attrs.update(attrs)
    with pytest.raises(InputError, match=r"promises 1800x2800x2900 int16 \(29232000000 bytes\) but the file stores 0"):
        load_volume(huge)


def test_the_command_line_denoises_a_minc_volume(tmp_path):
    stored = (ellipsoid_phantom((9, 11, 10)) * 200 + 20).astype(np.uint8)
    src = write_minc1(tmp_path / "phantom.mnc.gz", stored, ("zspace", "yspace", "xspace"), np.zeros(9),
                      np.full(9, 255.0))
    before = src.read_bytes()
    r = CliRunner().invoke(cli, ["reconstruct", str(src), "-o", str(tmp_path / "den.nii.gz"), "--task", "denoise",
                                 "--method", "nlm"])
    assert r.exit_code == 0, (r.output, r.exception)
    out = nib.load(tmp_path / "den.nii.gz")
    assert out.shape == (9, 11, 10) and np.allclose(out.affine, load_volume(src).affine, atol=1e-5)
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "den.nii.gz"), "--reference", str(src), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["psnr"] > 20, (r.output, r.exception)
    assert src.read_bytes() == before
