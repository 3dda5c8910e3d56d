"""The latent posterior sampler inside MONAI: a Compose after LoadImaged, and the Inferer."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, EnsureChannelFirst, EnsureChannelFirstd, LoadImage, LoadImaged

from ldp_med.config import SimulateConfig
from ldp_med.errors import InputError
from ldp_med.integration.monai import LatentPosteriorInferer, LatentPriorReconstruct, LatentPriorReconstructd
from ldp_med.io.volume import Volume
from ldp_med.models.builders import build_models
from ldp_med.models.pretrained import Prior
from ldp_med.physics.degradations import fine_affine
from ldp_med.physics.simulate import simulate_kspace
from ldp_med.sampling.posterior import PosteriorConfig
from tests.conftest import TINY_MODEL, ellipsoid_phantom

CFG = PosteriorConfig(steps=6, t_start=0.5, dc_steps=1, prior_error=1.0, samples=2, min_coverage=0.3)


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    return Prior(TINY_MODEL, vae.eval(), unet.eval())


@pytest.fixture
def nifti(tmp_path):
    """A noisy, anisotropic, slightly rotated phantom in scanner-like units."""
    c, s = np.cos(0.05), np.sin(0.05)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, 1.2, 1.1])
    affine[:3, 3] = [-10.0, -14.0, -10.0]
    data = ellipsoid_phantom() * 200 + np.random.default_rng(0).normal(0, 5, (21, 24, 19)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.abs(data), affine), str(path))
    return path, affine


def test_compose_pipeline_denoise_with_std(prior, nifti):
    path, affine = nifti
    pipeline = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        LatentPriorReconstructd(keys="image", prior=prior, task="denoise", config=CFG),
    ])
    out = pipeline({"image": str(path)})
    rec, std = out["image"], out["image_std"]
    assert isinstance(rec, MetaTensor) and rec.shape == (1, 21, 24, 19)
    np.testing.assert_allclose(rec.affine.numpy(), affine, atol=1e-5)
    assert torch.isfinite(rec).all() and torch.isfinite(std).all()
    assert std.shape == rec.shape and (std >= 0).all() and std.max() > 0
    assert str(path) in str(rec.meta["filename_or_obj"])


def test_compose_pipeline_superres(prior, nifti):
    path, affine = nifti
    cfg = PosteriorConfig(steps=6, dc_steps=1, prior_error=1.0, min_coverage=0.3)
    pipeline = Compose([
        LoadImaged(keys="image"),
        EnsureChannelFirstd(keys="image"),
        LatentPriorReconstructd(keys="image", prior=prior, task="superres", config=cfg, factor=2, axis=2, noise_std=0.0),
    ])
    out = pipeline({"image": str(path)})
    assert out["image"].shape == (1, 21, 24, 38) and "image_std" not in out
    np.testing.assert_allclose(out["image"].affine.numpy(), fine_affine(affine, 2, 2), atol=1e-5)
    assert list(out["image"].meta["spatial_shape"]) == [21, 24, 38]


def test_inferer_on_a_batch_and_on_kspace(prior, nifti):
    path, affine = nifti
    img = EnsureChannelFirst()(LoadImage()(str(path)))
    batch = list_data_collate([{"image": img}, {"image": img}])["image"]
    inferer = LatentPosteriorInferer(prior, task="denoise", config=CFG, return_std=True)
    mean, std = inferer(batch)
    assert mean.shape == (2, 1, 21, 24, 19) and std.shape == mean.shape
    assert mean.affine.shape == (2, 4, 4)
    np.testing.assert_allclose(mean.affine[1].numpy(), affine, atol=1e-5)
    torch.testing.assert_close(mean[0], mean[1])  # same input, same seed
    single = LatentPosteriorInferer(prior, task="denoise", config=CFG)(img, prior)
    assert single.shape == (1, 21, 24, 19)
    with pytest.raises(TypeError):
        inferer(batch, network=torch.nn.Identity())

    ksp = simulate_kspace(Volume(ellipsoid_phantom(), np.eye(4)), SimulateConfig(coils=2, calib=6, accel=2.0, noise=0.002))
    rec = LatentPosteriorInferer(prior, task="kspace", config=CFG)(ksp)
    assert rec.shape == (1, 21, 24, 19) and torch.isfinite(rec).all()


def test_bad_inputs(prior):
    two = MetaTensor(torch.rand(2, 21, 24, 19), affine=torch.eye(4))
    with pytest.raises(InputError, match="single-channel"):
        LatentPriorReconstruct(prior, "denoise", CFG)(two)
    with pytest.raises(TypeError, match="MetaTensor"):
        LatentPriorReconstruct(prior, "denoise", CFG)(torch.rand(1, 21, 24, 19))
    with pytest.raises(ValueError, match="task"):
        LatentPriorReconstruct(prior, "deblur")
