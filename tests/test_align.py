"""Alignment to the model space (ldp_med.align) and the aligned model-space map (ldp_med.space, issue 17).

The moving volumes are the MNI152 template (or a T2-weighted rendering of its tissue maps) at 4 mm,
moved in world space by a known rigid transform (only the affine changes, so the truth is exact):
the estimate must map them back within 2 mm RMS over the brain.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import Orientation, ResizeWithPadOrCrop, ScaleIntensityRange, Spacing
from scipy.spatial.transform import Rotation

from ldp_med.align import AlignConfig, estimate_alignment, lstsq_affine, placement_rms
from ldp_med.config import ModelConfig
from ldp_med.data import synthetic
from ldp_med.errors import InputError
from ldp_med.io.volume import Volume
from ldp_med.space import EDGE_VOXELS, PercentileScaleIntensity, SpaceMap, ToModelSpace, model_grid_affine
from tests.conftest import oblique_affine

DOWN = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm grid -> every second voxel (4 mm)
#: a 4 mm working grid (levels 8 / 4 mm) keeps these tests fast; the defaults (2 mm) run in the slow test
FAST = AlignConfig(work_mm=4.0, translation_factors=(2, 1), rigid_factors=(2, 1), affine_factors=(2, 1),
                   sampling=0.3, iterations=40)


def _move(deg: float, axis, shift) -> np.ndarray:
    """Rigid world move: ``deg`` about ``axis`` through the MNI origin, then ``shift`` mm."""
    t = np.eye(4)
    t[:3, :3] = Rotation.from_rotvec(np.deg2rad(deg) * np.asarray(axis, float) / np.linalg.norm(axis)).as_matrix()
    t[:3, 3] = shift
    return t


def _brain_points(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def template4():
    """(T1 data, T2w rendering, brain mask) of the template at 4 mm, and the 4 mm affine."""
    maps = synthetic.tissue_maps()
    gm, wm, csf = synthetic.TISSUE_INTENSITIES["T2w"]
    t2 = gm * maps["gm"] + wm * maps["wm"] + csf * maps["csf"]
    sl = (slice(None, None, 2),) * 3
    return maps["t1"][sl].copy(), t2[sl].astype(np.float32), maps["mask"][sl] > 0.5, synthetic.grid_affine() @ DOWN


@pytest.mark.parametrize("contrast", ["T1w", "T2w"])
def test_moved_and_rotated_volume_is_aligned_back(template4, contrast):
    t1, t2, mask, aff = template4
    move = _move(10.0, [1.0, 0.4, -0.3], [20.0, -8.0, 6.0])
    vol = Volume(t1 if contrast == "T1w" else t2, move @ aff)  # the same image, 22 mm and 10 degrees away
    est = estimate_alignment(vol, FAST)
    pts = _brain_points(vol.affine, mask)
    assert placement_rms(est.matrix, np.linalg.inv(move), pts) <= 2.0
    assert est.matrix.shape == (4, 4) and est.metric > 0 and est.seconds > 0
    assert est.stages == ("translation", "rigid", "affine", "nonlinear fit")


def test_a_stage_runs_on_the_grid_of_its_finest_level(template4, monkeypatch):
    """dipy's finest level is the grid it is given, whatever the factors say: a stage whose finest factor is 2
    must be handed the input on every second voxel (same world positions), not the full grid."""
    from dipy.align import imaffine

    seen = []
    optimize = imaffine.AffineRegistration.optimize

    def spy(self, static, moving, transform, params0, **kw):
        seen.append((type(transform).__name__, static.shape, kw["static_grid2world"].copy(), list(self.factors)))
        return optimize(self, static, moving, transform, params0, **kw)

    monkeypatch.setattr(imaffine.AffineRegistration, "optimize", spy)
    t1, _, mask, aff = template4
    move = _move(10.0, [1.0, 0.4, -0.3], [20.0, -8.0, 6.0])
    vol = Volume(t1, move @ aff)
    cfg = AlignConfig(**{**FAST.__dict__, "translation_factors": (4, 2), "rigid_factors": (2,)})
    est = estimate_alignment(vol, cfg)
    (_, full_shape, full_aff, f_aff) = seen[-1]
    assert seen[-1][0] == "AffineTransform3D" and f_aff == [2, 1]
    for name, shape, g2w, factors in seen[:2]:
        assert shape == tuple(-(-n // 2) for n in full_shape), name  # every second voxel
        np.testing.assert_allclose(g2w, full_aff @ np.diag([2.0, 2.0, 2.0, 1.0]))  # the same world positions
    assert seen[0][3] == [2, 1] and seen[1][3] == [1]
    assert placement_rms(est.matrix, np.linalg.inv(move), _brain_points(vol.affine, mask)) <= 2.0



def test_the_start_search_compares_the_input_with_the_template_reduced_to_its_level(monkeypatch):
    """The search evaluates the metric ~1300 times and dipy copies the moving image on each: it must get the
    template on the search level's grid (every k-th voxel, the same world positions, smoothed), not at 2 mm."""
    from dipy.align import imaffine

    seen = []
    setup = imaffine.MutualInformationMetric.setup

    def spy(self, transform, static, moving, static_grid2world=None, moving_grid2world=None, **kw):
        if self.sampling_proportion is None:  # the search's dense metric, not a stage's sampled one
            seen.append((static.shape, moving, static_grid2world.copy(), moving_grid2world.copy()))
        return setup(self, transform, static, moving, static_grid2world=static_grid2world,
                     moving_grid2world=moving_grid2world, **kw)

    monkeypatch.setattr(imaffine.MutualInformationMetric, "setup", spy)
    t1, affine = synthetic.template_volume()
    vol = Volume(t1[10:80, 12:96, 8:78].copy(), affine @ np.array([[1, 0, 0, 10], [0, 1, 0, 12], [0, 0, 1, 8],
                                                                   [0, 0, 0, 1.0]]))
    estimate_alignment(vol, AlignConfig(affine=False, iterations=5))
    (s_shape, moving, s_aff, m_aff), = seen
    k = int(round(np.linalg.norm(s_aff[:3, 0]) / np.linalg.norm(affine[:3, 0])))  # the level, in template voxels
    assert k >= 2 and moving.shape == tuple(-(-n // k) for n in t1.shape)
    np.testing.assert_allclose(m_aff, affine @ np.diag([k, k, k, 1.0]))  # voxel i = the template's voxel k * i
    inner = (slice(4, -4),) * 3  # away from the border the smoothed template keeps its large-scale intensity
    assert abs(float(moving[inner].mean()) - float(t1[::k, ::k, ::k][inner].mean())) < 0.02
    assert float(np.abs(np.diff(moving, axis=0)).mean()) < float(np.abs(np.diff(t1[::k, ::k, ::k], axis=0)).mean())

@pytest.mark.slow
def test_default_settings_align_a_moved_template(template4):
    t1, _, mask, aff = template4
    move = _move(15.0, [0.0, 0.3, 1.0], [-30.0, 10.0, 20.0])
    vol = Volume(t1, move @ aff)
    est = estimate_alignment(vol)
    assert placement_rms(est.matrix, np.linalg.inv(move), _brain_points(vol.affine, mask)) <= 2.0


def test_the_affine_of_a_nonlinear_placement_finds_a_deformed_brain_where_mutual_information_misses_it():
    """A synthetic subject (its own elastic field on top of an affine): the truth is the least-squares affine of
    where its brain voxels came from. Mutual information alone ended 1.98 mm from it on this subject; the
    least-squares affine of SyN's placement 0.71 mm (docs/results_align.md, "Session 40")."""
    seed = 10003
    subj = synthetic.make_subject(seed, return_tissue=True)
    src = synthetic.deformation_source(seed)
    brain, aff = subj["tissue"].sum(0) > 0.5, subj["affine"]
    x = _brain_points(aff, brain)
    truth = lstsq_affine(x, src[:, brain].T @ aff[:3, :3].T + aff[:3, 3])
    est = estimate_alignment(Volume(subj["image"], aff))
    assert est.stages[-1] == "nonlinear fit"
    assert placement_rms(est.matrix, truth, x) <= 1.2


def test_the_nonlinear_fit_is_skipped_for_a_head(template4):
    """A bright scalp around the brain (a third of the foreground) has nothing to match in the brain's maps."""
    from scipy import ndimage

    t1, _, mask, aff = template4
    scalp = ndimage.binary_dilation(mask, iterations=4) & ~ndimage.binary_dilation(mask, iterations=2)
    head = np.where(scalp, 0.8, t1).astype(np.float32)
    assert estimate_alignment(Volume(t1, aff), FAST).stages[-1] == "nonlinear fit"
    assert estimate_alignment(Volume(head, aff), FAST).stages == ("translation", "rigid", "affine")


def test_the_nonlinear_fit_is_skipped_for_another_reference(template4):
    t1, _, mask, aff = template4
    vol = Volume(t1, _move(5.0, [0.0, 0.0, 1.0], [6.0, 0.0, 0.0]) @ aff)
    est = estimate_alignment(vol, FAST, reference=Volume(t1, aff))
    assert est.stages == ("translation", "rigid", "affine")


def test_lps_anisotropic_grid_is_aligned_back(template4):
    t1, _, mask, aff = template4
    # LPS voxel order (x and y flipped) and 4 x 4 x 8 mm voxels: the world positions are unchanged
    data = t1[::-1, ::-1, ::2]
    a = aff @ np.diag([1.0, 1.0, 2.0, 1.0])
    a[:3, 3] += a[:3, 0] * (t1.shape[0] - 1) + a[:3, 1] * (t1.shape[1] - 1)
    a[:3, :2] *= -1
    move = _move(-8.0, [0.2, 1.0, 0.0], [-15.0, 10.0, 12.0])
    vol = Volume(np.ascontiguousarray(data), move @ a)
    est = estimate_alignment(vol, FAST)
    assert placement_rms(est.matrix, np.linalg.inv(move), _brain_points(vol.affine, mask[::-1, ::-1, ::2])) <= 2.0


def test_partial_field_of_view_lands_in_its_part_of_the_model_grid(template4):
    t1, _, mask, aff = template4
    nz = t1.shape[2]
    top = t1[:, :, nz // 2:]  # the upper half of the field of view
    a = aff.copy()
    a[:3, 3] += a[:3, 2] * (nz // 2)
    move = _move(6.0, [0.0, 0.0, 1.0], [12.0, 15.0, -10.0])
    vol = Volume(np.ascontiguousarray(top) * 800.0 + 20.0, move @ a, {"source": "top half"})
    est = estimate_alignment(vol, FAST)
    assert placement_rms(est.matrix, np.linalg.inv(move), _brain_points(vol.affine, mask[:, :, nz // 2:])) <= 2.0

    # small model grid (4 mm, the template's field of view) so the test stays fast
    grid, mni = t1.shape, aff
    x, info = ToModelSpace(grid, 4.0, transform=est.matrix, model_affine=mni)(vol)
    x = x[0].numpy()
    # nothing lands below the acquired half but space.EDGE_VOXELS edge replicas (4 mm voxels both) and the spline's ringing
    lower, upper = x[:, :, : nz // 2 - 2 - EDGE_VOXELS], x[:, :, nz // 2 + 2:]
    assert float(lower.max()) < 0.005
    ref = t1[:, :, nz // 2 + 2:] / np.percentile(t1[:, :, nz // 2:], 99.5)
    assert float(np.abs(upper - np.clip(ref, 0, 1)).mean()) < 0.03
    # centring (today's placement) puts the half in the middle of the grid instead
    xc = ToModelSpace(grid, 4.0)(vol)[0][0].numpy()
    assert float(xc[:, :, : nz // 2 - 2].max()) > 0.5
    # the map the sampler uses agrees with the transform, and goes back to the acquisition grid exactly
    back = info.to_acquisition(torch.as_tensor(x))
    assert back.shape == vol.shape
    inside = vol.data > 0.3 * vol.data.max()
    assert float(np.abs(back - vol.data)[inside].mean()) < 0.03 * float(vol.data.max())


def _smooth_volume() -> Volume:
    shape, affine = (27, 31, 23), oblique_affine()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    r = np.linalg.norm((ijk - c) / (np.array(shape) / 3), axis=-1)
    return Volume((1000.0 * np.exp(-(r**4)) * (1 + 0.02 * ijk[..., 0])).astype(np.float32), affine,
                  {"source": "smooth"})


def test_align_false_is_todays_space_map_exactly():
    vol = _smooth_volume()
    cfg = ModelConfig(grid=(24, 28, 20), voxel_mm=2.0)
    # today's construction, spelled out
    model_affine, scale, offset = ToModelSpace.from_config(cfg).geometry(vol)
    today = SpaceMap(vol.shape, vol.affine, cfg.grid, model_affine, scale, offset)
    for new in (SpaceMap.for_volume(vol, cfg), SpaceMap.for_volume(vol, cfg, align=False)):
        assert new.transform is None and new.alignment is None
        assert (new.scale, new.offset, new.grid) == (today.scale, today.offset, today.grid)
        assert torch.equal(new._to_model, today._to_model) and torch.equal(new._to_acq, today._to_acq)
        assert torch.equal(new.coverage, today.coverage)
    # and the centring pipeline is still Scale -> Orientation -> Spacing -> ResizeWithPadOrCrop (-> the spline's clip)
    steps = [type(t) for t in ToModelSpace(cfg.grid, 2.0).pipeline.transforms]
    assert steps == [PercentileScaleIntensity, Orientation, Spacing, ResizeWithPadOrCrop, ScaleIntensityRange]


def test_aligned_mode_geometry_inverse_and_space_map_agree():
    vol = _smooth_volume()
    cfg = ModelConfig(grid=(24, 28, 20), voxel_mm=2.0)
    mni = model_grid_affine(cfg.grid, cfg.voxel_mm)
    m = _move(7.0, [0.3, -1.0, 0.5], [4.0, -3.0, 5.0])
    m[:3, 3] += mni[:3, :3] @ ((np.array(cfg.grid) - 1) / 2) + mni[:3, 3] - vol.affine[:3, :3] @ (
        (np.array(vol.shape) - 1) / 2) - vol.affine[:3, 3]  # the volume lands near the grid centre
    space = ToModelSpace.from_config(cfg, transform=m)
    x, info = space(vol)
    np.testing.assert_allclose(info.model_affine, np.linalg.solve(m, mni), atol=1e-9)
    np.testing.assert_allclose(space.geometry(vol)[0], info.model_affine, atol=1e-9)
    assert info.scale == pytest.approx(space.geometry(vol)[1]) and info.offset == pytest.approx(space.geometry(vol)[2])
    back = info.to_acquisition(x)
    inside = vol.data > 0.5 * vol.data.max()
    assert float((np.abs(back - vol.data)[inside] / vol.data[inside]).mean()) < 0.05

    smap = SpaceMap.for_volume(vol, cfg, transform=m)
    np.testing.assert_allclose(smap.transform, m)
    xm = smap.to_model(torch.from_numpy(vol.data)[None])[0, 0]
    assert float((xm - x[0]).abs().max()) < 0.02  # one trilinear resampling each, same grid


def test_space_map_align_true_estimates_and_keeps_the_transform(template4):
    t1, _, mask, aff = template4
    move = _move(5.0, [0.0, 1.0, 0.0], [10.0, 0.0, -10.0])
    vol = Volume(t1, move @ aff)
    cfg = ModelConfig(grid=t1.shape, voxel_mm=4.0, affine=tuple(map(tuple, aff)))
    smap = SpaceMap.for_volume(vol, cfg, align=True, align_cfg=FAST)
    assert smap.alignment is not None and np.array_equal(smap.transform, smap.alignment.matrix)
    assert placement_rms(smap.transform, np.linalg.inv(move), _brain_points(vol.affine, mask)) <= 2.0
    json.dumps(smap.alignment.to_meta())  # goes into output metadata as is


def test_bad_inputs_raise():
    aff = np.eye(4)
    with pytest.raises(InputError):
        estimate_alignment(Volume(np.ones((8, 9, 10), np.float32), aff, {"source": "flat.nii"}))
    data = np.zeros((8, 9, 10), np.float32)
    data[0, 0, 0] = np.nan
    with pytest.raises(InputError):
        estimate_alignment(Volume(data, aff))
    with pytest.raises(ValueError):
        ToModelSpace((8, 8, 8), 2.0, crop_foreground=True, transform=np.eye(4))
    with pytest.raises(ValueError):
        ToModelSpace((8, 8, 8), 2.0, transform=np.zeros((4, 4)))


def test_config_is_frozen_and_defaults_are_the_documented_ones():
    cfg = AlignConfig()
    assert cfg.work_mm == 2.0 and cfg.affine
    with pytest.raises(Exception):
        cfg.work_mm = 1.0  # type: ignore[misc]


def test_autoencode_align_writes_the_transform_into_the_output(tmp_path):
    import json

    import nibabel as nib
    from click.testing import CliRunner

    from ldp_med.cli import cli
    from ldp_med.data.synthetic import template_volume
    from ldp_med.io.nifti import save_nifti

    data, affine = template_volume()
    src = tmp_path / "t1.nii.gz"
    save_nifti(Volume(data[::2, ::2, ::2].copy(), affine @ np.diag([2.0, 2.0, 2.0, 1.0])), src)
    r = CliRunner().invoke(cli, ["autoencode", str(src), "-o", str(tmp_path / "ae.nii.gz"), "--align"])
    assert r.exit_code == 0, r.output
    ext = nib.load(str(tmp_path / "ae.nii.gz")).header.extensions
    meta = json.loads(ext[0].get_content())["ldp_med"]
    assert np.asarray(meta["align_matrix"]).shape == (4, 4) and meta["align_seconds"] > 0
