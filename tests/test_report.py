"""Report PNGs show anatomy the same way whatever order the voxels are stored in, with true proportions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from ldp_med.report import orthogonal_slices, save_slices_png
from tests.conftest import ellipsoid_phantom


def _stored_as(codes: str, ras: np.ndarray, ras_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored in another axis order (``codes``, e.g. FreeSurfer's LIA): data and affine."""
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))
    return apply_orientation(ras, ornt), ras_affine @ inv_ornt_aff(ornt, ras.shape)


def test_slices_of_an_lia_or_lps_volume_are_the_slices_of_its_ras_copy_with_voxel_proportions():
    ras = ellipsoid_phantom((21, 24, 19)) + np.linspace(0, 1, 21)[:, None, None]  # left-right asymmetric
    ras_affine = np.diag([1.0, 1.0, 3.0, 1.0])  # thick axial slices
    expected = orthogonal_slices(ras, ras_affine)
    assert [a for _, a in expected] == [3.0, 3.0, 1.0]
    for codes in ("LIA", "LPS", "PSR"):
        data, affine = _stored_as(codes, ras, ras_affine)
        assert nib.aff2axcodes(affine) == tuple(codes)
        got = orthogonal_slices(data, affine)
        for (a, asp_a), (b, asp_b) in zip(got, expected):
            np.testing.assert_array_equal(a, b)
            assert asp_a == asp_b
    lia, _ = _stored_as("LIA", ras, ras_affine)
    assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(orthogonal_slices(lia), expected))


def test_a_report_of_a_stored_volume_is_written(tmp_path):
    data, affine = _stored_as("LIA", ellipsoid_phantom(), np.eye(4))
    save_slices_png(tmp_path / "r.png", {"a": data, "b": data * 2}, affine=affine, title="LIA")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
