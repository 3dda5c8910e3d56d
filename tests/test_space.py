"""Acquisition space <-> model space (ldp_med.space) on tiny odd-sized volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, Invertd, LoadImaged, ScaleIntensityRangePercentiles

from ldp_med.space import ModelSpaceInfo, PercentileScaleIntensity, ToModelSpace, ToModelSpaced
from ldp_med.errors import InputError
from ldp_med.io.volume import Volume
from tests.conftest import ellipsoid_phantom, oblique_affine

GRID = (24, 28, 20)
VOX = 2.0


def _flipped_affine() -> np.ndarray:
    """Anisotropic 1.2 x 0.9 x 3 mm voxels with x and z flipped (an LPI-like voxel order)."""
    a = np.diag([-1.2, 0.9, -3.0, 1.0])
    a[:3, 3] = [20.0, -15.0, 25.0]
    return a


def _fov_centre(shape, affine) -> np.ndarray:
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


def _field(xyz: np.ndarray, centre: np.ndarray, radius: float = 13.0) -> np.ndarray:
    """A smooth blob (flat top, soft edge, ramps along every world axis, so no mirror symmetry), ~0..1500."""
    d = xyz - centre
    r = np.linalg.norm(d / np.array([1.0, 1.15, 0.9]), axis=-1) / radius
    ramp = 1 + 0.25 * (d[..., 0] + 0.7 * d[..., 1] - 0.5 * d[..., 2]) / radius
    return 1000.0 * np.exp(-(r**4)) * ramp


def _world(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _smooth_volume(shape, affine) -> Volume:
    data = _field(_world(shape, affine), _fov_centre(shape, affine)).astype(np.float32)
    return Volume(data, affine, {"source": "smooth-phantom"})


GEOMETRIES = {
    "oblique": ((27, 31, 23), oblique_affine()),
    "flipped-anisotropic": ((31, 41, 15), _flipped_affine()),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_is_interpolation_error_only(name):
    shape, affine = GEOMETRIES[name]
    vol = _smooth_volume(shape, affine)
    x, info = ToModelSpace(GRID, VOX)(vol)

    assert type(x) is torch.Tensor and x.dtype == torch.float32 and tuple(x.shape) == (1, *GRID)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    back = info.to_acquisition(x)
    assert back.shape == shape and back.dtype == np.float32
    np.testing.assert_array_equal(info.original_affine, affine)  # save `back` with the input's affine

    inside = vol.data > 0.5 * vol.data.max()
    rel = np.abs(back - vol.data)[inside] / vol.data[inside]
    assert rel.mean() < 0.05
    assert np.abs(back - vol.data).max() < 0.1 * vol.data.max()


def test_the_cubic_spline_round_trip_keeps_detail_that_trilinear_smooths_away(monkeypatch):
    """Why ToModelSpace resamples with a cubic spline: a 2 mm volume there and back through the 2 mm grid at a
    sub-voxel offset and a small rotation (an aligned placement), trilinear both ways, averages neighbours twice."""
    import ldp_med.space
    from scipy import ndimage

    data = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((25, 29, 19)), 1.0)
    vol = Volume((data - data.min()).astype(np.float32), np.diag([VOX, VOX, VOX, 1.0]))
    move = np.eye(4)
    c, s = np.cos(np.radians(4.0)), np.sin(np.radians(4.0))
    move[:2, :2] = [[c, -s], [s, c]]
    move[:3, 3] = [0.7, -0.9, 0.5]  # mm: sub-voxel
    mni = np.diag([VOX, VOX, VOX, 1.0])
    mni[:3, 3] = -VOX * 2  # the grid starts 2 voxels before the volume: it holds all of it
    core = (slice(4, -4),) * 3
    err = {}
    for name in ("trilinear", "spline"):
        if name == "trilinear":
            monkeypatch.setattr(ldp_med.space, "_SPLINE", dict(mode="bilinear", padding_mode="zeros"))
        else:
            monkeypatch.undo()
        x, info = ToModelSpace((32, 36, 26), VOX, upper_percentile=100.0, transform=move, model_affine=mni)(vol)
        back = info.to_acquisition(x)
        err[name] = float(np.sqrt(np.mean((back - vol.data)[core] ** 2)) / vol.data[core].std())
    assert err["spline"] < 0.4 * err["trilinear"], err


def test_a_field_of_view_cut_through_the_head_keeps_its_edge_in_the_aligned_round_trip(monkeypatch):
    """Why the aligned placement replicates the field of view's edge first (``space.EDGE_VOXELS``): signal that
    reaches the edge (a partial field of view) otherwise meets zeros there, and the spline rings back into it."""
    import ldp_med.space
    from monai.transforms import BorderPad
    from scipy import ndimage

    data = ndimage.gaussian_filter(np.random.default_rng(1).standard_normal((25, 29, 19)), 1.5)
    vol = Volume((data - data.min() + 0.5).astype(np.float32), np.diag([VOX, VOX, VOX, 1.0]))  # signal to every face
    move = np.eye(4)
    move[:3, 3] = [0.7, -0.9, 0.5]  # mm: sub-voxel
    mni = np.diag([VOX, VOX, VOX, 1.0])
    mni[:3, 3] = -VOX * 4  # the grid holds the whole field of view and more
    face = np.ones(vol.shape, bool)
    face[(slice(1, -1),) * 3] = False  # the outermost layer of voxels
    err = {}
    for name in ("zeros past the edge", "edge replicated"):
        if name == "zeros past the edge":
            monkeypatch.setattr(ldp_med.space, "_EDGE", BorderPad(spatial_border=0))
        else:
            monkeypatch.undo()
        x, info = ToModelSpace((34, 38, 28), VOX, upper_percentile=100.0, transform=move, model_affine=mni)(vol)
        err[name] = float(np.abs(info.to_acquisition(x) - vol.data)[face].mean() / vol.data.mean())
    assert err["edge replicated"] < 0.5 * err["zeros past the edge"], err


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_model_grid_is_ras_and_centred_and_geometrically_right(name):
    shape, affine = GEOMETRIES[name]
    vol = _smooth_volume(shape, affine)
    x, info = ToModelSpace(GRID, VOX)(vol)

    # RAS, isotropic, world-aligned; the field of view's centre is on the grid centre.
    np.testing.assert_allclose(info.model_affine[:3, :3], np.eye(3) * VOX, atol=1e-6)
    grid_centre = info.model_affine[:3, :3] @ ((np.asarray(GRID) - 1) / 2) + info.model_affine[:3, 3]
    assert np.all(np.abs(grid_centre - _fov_centre(shape, affine)) <= VOX + 1e-6)

    # Each model voxel holds the phantom at its world position (flips / rotation handled).
    expected = _field(_world(GRID, info.model_affine), _fov_centre(shape, affine))
    got = info.to_intensity(x[0].numpy())
    inside = expected > 0.5 * expected.max()
    assert np.abs(got - expected)[inside].mean() < 0.02 * expected.max()  # a flip or 1-voxel shift gives > 0.04


def test_intensity_units_restored_and_scaling_matches_monai():
    data = ellipsoid_phantom() * 1000.0
    vol = Volume(data, oblique_affine())
    x, info = ToModelSpace(GRID, VOX, upper_percentile=99.5)(vol)
    assert info.offset == pytest.approx(float(data.min()))
    assert info.scale == pytest.approx(float(np.percentile(data, 99.5)) - float(data.min()), rel=1e-5)
    back = info.to_acquisition(x)
    assert 500 < back.max() <= data.max() + 1e-3  # scanner units, not [0, 1]
    bright = data > 700
    assert abs(back[bright].mean() - data[bright].mean()) < 0.1 * data[bright].mean()

    # Same numbers as MONAI's ScaleIntensityRangePercentiles, plus an exact inverse.
    img = MetaTensor(torch.from_numpy(data[None].copy()))
    scaler = PercentileScaleIntensity(0.0, 99.5)
    ours = scaler(img)
    ref = ScaleIntensityRangePercentiles(lower=0, upper=99.5, b_min=0, b_max=1, clip=True)(data[None])
    np.testing.assert_allclose(ours.numpy(), np.asarray(ref), atol=1e-6)
    undone = scaler.inverse(ours).numpy()[0]
    kept = data <= np.percentile(data, 99.5)
    np.testing.assert_allclose(undone[kept], data[kept], rtol=1e-5, atol=1e-3)


def test_small_fov_is_padded_and_exactly_undone():
    rng = np.random.default_rng(0)
    data = (100 + 50 * rng.random((9, 11, 7))).astype(np.float32)
    affine = np.diag([VOX, VOX, VOX, 1.0])
    x, info = ToModelSpace(GRID, VOX, upper_percentile=100.0)(Volume(data, affine))
    x = x[0].numpy()
    # Same voxel grid: no interpolation, the data sit in a central box, zeros around it.
    starts = [(g - n) // 2 for g, n in zip(GRID, data.shape)]
    box = tuple(slice(s, s + n) for s, n in zip(starts, data.shape))
    np.testing.assert_allclose(info.to_intensity(x[box]), data, rtol=1e-5)
    outside = np.ones(GRID, bool)
    outside[box] = False
    assert np.all(x[outside] == 0)
    np.testing.assert_allclose(info.to_acquisition(x), data, rtol=1e-5)


def test_large_fov_is_cropped_centrally_and_the_rest_returns_as_background():
    data = ellipsoid_phantom((31, 35, 25)) * 300.0 + 10.0
    x, info = ToModelSpace(GRID, VOX, upper_percentile=100.0)(Volume(data, np.diag([VOX, VOX, VOX, 1.0])))
    starts = [(n - g) // 2 for g, n in zip(GRID, data.shape)]
    box = tuple(slice(s, s + g) for s, g in zip(starts, GRID))
    np.testing.assert_allclose(info.to_intensity(x[0].numpy()), data[box], rtol=1e-5)
    back = info.to_acquisition(x)
    np.testing.assert_allclose(back[box], data[box], rtol=1e-5)
    outside = np.ones(data.shape, bool)
    outside[box] = False
    np.testing.assert_allclose(back[outside], data.min())


def test_crop_foreground_centres_an_off_centre_object():
    data = np.zeros((35, 39, 27), np.float32)
    data[2:14, 3:17, 2:12] = ellipsoid_phantom((12, 14, 10)) * 500  # in a corner
    vol = Volume(data, np.diag([VOX, VOX, VOX, 1.0]))
    centre = (np.asarray(GRID) - 1) / 2

    def centre_of_mass(x):
        w = x[0].numpy()
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in GRID], indexing="ij"), -1)
        return (idx * w[..., None]).reshape(-1, 3).sum(0) / w.sum()

    x_crop, _ = ToModelSpace(GRID, VOX, crop_foreground=True)(vol)
    x_plain, _ = ToModelSpace(GRID, VOX)(vol)
    assert np.all(np.abs(centre_of_mass(x_crop) - centre) < 1.5)
    assert np.any(np.abs(centre_of_mass(x_plain) - centre) > 4)


def test_bad_inputs_fail_loudly():
    t = ToModelSpace(GRID, VOX)
    bad = ellipsoid_phantom()
    bad[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="scan.nii"):
        t(Volume(bad, oblique_affine(), {"source": "scan.nii"}))
    with pytest.raises(InputError, match="constant"):
        t(Volume(np.full((5, 6, 7), 3.0, np.float32), np.eye(4), {"source": "flat.nii"}))
    with pytest.raises(InputError, match="singular"):
        t(Volume(ellipsoid_phantom(), np.diag([1.0, 0.0, 1.0, 1.0])))
    x, info = t(Volume(ellipsoid_phantom(), oblique_affine()))
    with pytest.raises(ValueError, match="shape"):
        info.to_acquisition(torch.zeros(1, 5, 5, 5))
    # A bare (*grid) array is accepted too, and the info can be reused.
    a = info.to_acquisition(x[0].numpy())
    b = info.to_acquisition(x)
    np.testing.assert_array_equal(a, b)
    assert isinstance(info, ModelSpaceInfo)


@pytest.mark.filterwarnings("ignore:NvImgCodec")  # MONAI probes an optional GPU DICOM decoder
@pytest.mark.parametrize("image_only", [True, False])
def test_dictionary_pipeline_after_loadimaged(tmp_path, image_only):
    vol = _smooth_volume(*GEOMETRIES["oblique"])
    path = tmp_path / "scan.nii.gz"
    img = nib.Nifti1Image(vol.data, vol.affine)
    img.set_sform(vol.affine, code=1)
    img.set_qform(vol.affine, code=1)
    nib.save(img, str(path))

    pipeline = Compose(
        [
            LoadImaged(keys="image", image_only=image_only, reader="NibabelReader"),
            EnsureChannelFirstd(keys="image"),
            ToModelSpaced(keys="image", grid=GRID, voxel_mm=VOX, info_postfix="model_space"),
        ]
    )
    d = pipeline({"image": str(path)})
    assert tuple(d["image"].shape) == (1, *GRID)
    x_arr, _ = ToModelSpace(GRID, VOX)(vol)
    np.testing.assert_allclose(d["image"].numpy(), x_arr.numpy(), atol=1e-4)

    # Three ways back: the stored info, MONAI's Invertd on a prediction, Compose.inverse.
    back_info = d["image_model_space"].to_acquisition(d["image"])
    d["pred"] = d["image"].clone()
    back_invertd = Invertd(keys="pred", transform=pipeline, orig_keys="image")(d)["pred"]
    back_compose = pipeline.inverse({"image": d["image"]})["image"]
    inside = vol.data > 0.5 * vol.data.max()
    for back in (back_info, np.asarray(back_invertd)[0], np.asarray(back_compose)[0]):
        assert back.shape == vol.shape
        assert np.abs(back - vol.data)[inside].mean() < 0.05 * vol.data.max()


def test_a_model_grid_mask_lands_where_the_model_grid_covers_the_acquisition():
    from ldp_med.config import ModelConfig
    from ldp_med.space import SpaceMap

    # a field of view wider than the model grid along x: the outer columns get nothing
    vol = Volume(ellipsoid_phantom((31, 13, 11)), np.diag([2.0, 2.0, 2.0, 1.0]))
    smap = SpaceMap.for_volume(vol, ModelConfig(grid=(16, 16, 16), voxel_mm=2.0))
    ones = smap.mask_to_acq(torch.ones(16, 16, 16))
    np.testing.assert_allclose(ones, smap.coverage.numpy(), atol=1e-6)
    assert ones[0].max() == 0 and ones[15].min() == 1
    half = torch.zeros(16, 16, 16)
    half[8:] = 1.0  # the model grid's +x half (RAS): the acquisition's +x side
    m = smap.mask_to_acq(half)
    assert m[:12].max() == 0 and m[17:23].min() == 1


def test_a_crop_of_the_model_grid_maps_the_field_of_view_as_the_whole_grid_does():
    from ldp_med.config import ModelConfig
    from ldp_med.space import SpaceMap

    cfg = ModelConfig(grid=(64, 64, 48), voxel_mm=2.0)
    vol = Volume(ellipsoid_phantom((13, 17, 9)) * 7.0, np.diag([2.0, 2.0, 3.0, 1.0]))  # a small slab
    full = SpaceMap.for_volume(vol, cfg)
    box = full.cropped(16, 4)
    assert box.full_grid == (64, 64, 48) and all(n % 16 == 0 and s % 16 == 0 for n, s in zip(box.grid, box.box_start))
    # 13 x 17 x 13.5 model voxels around the grid centre, 4 more each side, out to the 16-voxel lattice
    assert box.grid == (32, 32, 48) and box.box_start == (16, 16, 0)
    np.testing.assert_allclose(box.coverage.numpy(), full.coverage.numpy(), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    m = torch.rand(1, 1, *full.grid, generator=g)
    torch.testing.assert_close(box.to_acq(box.crop(m)), full.to_acq(m), atol=1e-4, rtol=0)  # float32 coordinates
    x = torch.from_numpy(vol.data)[None]
    torch.testing.assert_close(box.to_model(x), box.crop(full.to_model(x)), atol=1e-5, rtol=0)
    np.testing.assert_allclose(box.mask_to_acq(m[0, 0]), full.mask_to_acq(m[0, 0]), atol=1e-5)
    # a field of view that fills the grid keeps the whole grid
    whole = SpaceMap.for_volume(Volume(ellipsoid_phantom((63, 63, 47)), np.diag([2.0, 2.0, 2.0, 1.0])), cfg)
    assert whole.cropped(16, 4) is whole


def test_the_detail_a_misaligned_grid_loses_is_given_back_exactly():
    """``SpaceMap.detail``: what an acquisition image loses on its round trip through the model grid. Where the
    grids line up (2 mm on 2 mm, voxel centres on voxel centres) nothing is lost; where they do not (an oblique or
    coarse grid) the round trip blurs, and the sampler's ``_State.to_acq`` adds the loss back (and the part above the
    model's intensity range), so the model image of the fallback itself returns the fallback exactly."""
    from ldp_med.config import ModelConfig
    from ldp_med.sampling.posterior import _State
    from ldp_med.space import SpaceMap

    cfg = ModelConfig(grid=(32, 32, 32), voxel_mm=2.0)
    on_grid = Volume(ellipsoid_phantom((20, 24, 16)), np.diag([2.0, 2.0, 2.0, 1.0]))
    x = torch.from_numpy(on_grid.data)[None]
    smap = SpaceMap.for_volume(on_grid, cfg)
    in_range = x <= smap.offset + smap.scale  # above the model's range the clamp is lost too
    assert smap.detail(x)[in_range].abs().max() < 1e-5 and smap.detail(x)[~in_range].abs().max() > 0
    off = Volume(ellipsoid_phantom((21, 25, 13)), oblique_affine())
    smap = SpaceMap.for_volume(off, cfg)
    x = torch.from_numpy(off.data)[None]
    lost = smap.detail(x)
    assert lost.abs().max() > 0.05 * float(x.max())  # the round trip loses detail here
    plain, kept = _State(None, None, None, x), _State(None, None, None, x, keep_detail=True)
    m = kept.set_fallback(x, smap)
    torch.testing.assert_close(m, smap.to_model(x), atol=0, rtol=0)  # the fallback's model image, for the encoder
    torch.testing.assert_close(kept.to_acq(smap, m), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.to_acq(smap, m), x - lost, atol=1e-5, rtol=0)
    two = _State(None, None, None, x, keep_detail=True)
    two.set_fallback(torch.cat([0.5 * x, x]), smap)  # per-sample fallbacks: sample 1's is x
    torch.testing.assert_close(two.to_acq(smap, m, 1), x, atol=1e-5, rtol=0)


def test_a_batch_maps_to_the_acquisition_grid_as_its_samples_do_one_by_one():
    """``SpaceMap.to_acq`` maps one sample at a time (memory); a batch of images and fallbacks gives each sample's own
    map, and a batch of one on either side is broadcast over the other."""
    from ldp_med.config import ModelConfig
    from ldp_med.space import SpaceMap

    vol = Volume(ellipsoid_phantom((31, 13, 11)), oblique_affine())  # wider than the grid: the fallback shows
    smap = SpaceMap.for_volume(vol, ModelConfig(grid=(16, 16, 16), voxel_mm=2.0))
    g = torch.Generator().manual_seed(3)
    m, fb = torch.rand(3, 1, 16, 16, 16, generator=g), torch.rand(3, *vol.shape, generator=g)
    one = [smap.to_acq(m[b : b + 1], fb[b : b + 1]) for b in range(3)]
    torch.testing.assert_close(smap.to_acq(m, fb), torch.cat(one), atol=0, rtol=0)
    torch.testing.assert_close(smap.to_acq(m[:1], fb), torch.cat([smap.to_acq(m[:1], f[None]) for f in fb]))
    torch.testing.assert_close(smap.to_acq(m, fb[:1]), torch.cat([smap.to_acq(s[None], fb[:1]) for s in m]))
    assert smap.to_acq(m, fb)[0].sub(smap.to_acq(m, fb)[1]).abs().max() > 0  # the samples differ
