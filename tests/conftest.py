"""Shared fixtures and helpers: a small odd-sized phantom, a tiny model config, a phantom cohort, seeded everything.

Fixtures here need no import. Plain helpers and constants (``ellipsoid_phantom``, ``oblique_affine``,
``TINY_MODEL``, ``vae_cfg``, ``FakeEncoder``, ``text_model``) are imported with ``from tests.conftest import ...``;
test files never import from one another.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from ldp_med.config import DataConfig, LoopConfig, ModelConfig, SchedulerConfig, UNetConfig, VAEConfig, VAETrainConfig

ODD_SHAPE = (21, 24, 19)

TINY_MODEL = ModelConfig(
    grid=(24, 32, 24), voxel_mm=1.0,
    vae=VAEConfig(channels=(4, 8, 8), latent_channels=2, norm_num_groups=4, shortcut=False),
    unet=UNetConfig(channels=(8, 8), attention_levels=(False, False), num_head_channels=8, norm_num_groups=4,
                    with_conditioning=False, cross_attention_dim=None, text_in_time_embedding=False),
    scheduler=SchedulerConfig(prediction_type="epsilon"), text_encoder="",
)

FAKE_DIM = 16


def ellipsoid_phantom(shape=ODD_SHAPE) -> np.ndarray:
    """A brain-like phantom: a bright ellipsoid with darker inner ellipsoids, float32 in [0, 1]."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    x, y, z = grids
    vol = np.zeros(shape, np.float32)
    for (cx, cy, cz, rx, ry, rz, val) in [
        (0, 0, 0, 0.8, 0.85, 0.75, 0.6),
        (0, 0, 0, 0.7, 0.75, 0.65, 0.3),
        (-0.25, 0.1, 0, 0.15, 0.35, 0.3, -0.6),
        (0.25, 0.1, 0, 0.15, 0.35, 0.3, -0.6),
        (0.0, -0.4, 0.2, 0.2, 0.15, 0.15, 0.4),
        (0.3, 0.45, -0.3, 0.08, 0.1, 0.1, 0.5),
    ]:
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 <= 1
        vol[inside] += val
    return np.clip(vol, 0, None).astype(np.float32)


def oblique_affine() -> np.ndarray:
    """An anisotropic, slightly rotated voxel-to-RAS affine."""
    c, s = np.cos(0.1), np.sin(0.1)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([1.5, 1.2, 2.0])
    aff[:3, 3] = [-15.0, -14.0, -18.0]
    return aff


# Tiny convolutions run faster on one thread, and two threads crawl when the cores are shared.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def phantom_nifti(tmp_path):
    """Path of the phantom (scaled to 0..200, like scanner units) saved as NIfTI with an oblique affine."""
    import nibabel as nib

    path = tmp_path / "phantom.nii.gz"
    img = nib.Nifti1Image(ellipsoid_phantom() * 200.0, oblique_affine())
    img.set_qform(oblique_affine(), code=1)
    img.set_sform(oblique_affine(), code=1)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="session")
def cohort_dir(tmp_path_factory):
    """A folder of three small healthy-looking phantoms (NIfTI, 1 mm) standing in for a cohort."""
    import nibabel as nib

    d = tmp_path_factory.mktemp("scans")
    for i in range(3):
        vol = np.roll(ellipsoid_phantom(), i - 1, axis=i) * (100 + 50 * i)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / f"scan{i}.nii.gz"))
    return d


def vae_cfg(cohort_dir, **loop) -> VAETrainConfig:
    """A few-step VAE training of ``TINY_MODEL`` on ``cohort_dir``; ``loop`` overrides the loop settings."""
    base = dict(steps=6, batch_size=2, lr=3e-3, warmup=2, checkpoint_every=3, log_every=1, seed=1)
    return VAETrainConfig(model=TINY_MODEL, loop=LoopConfig(**{**base, **loop}),
                          data=DataConfig(folder=str(cohort_dir), cache_dir=str(cohort_dir / "cache")), patch=16)


class FakeEncoder:
    """Hashed bag of words, L2-normalised: same words -> same vector, no model, no extra."""

    name = "fake-bag-of-words"
    dim = FAKE_DIM

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return torch.nn.functional.normalize(out, dim=1)


def text_model(dim: int = FAKE_DIM, text_in_time_embedding: bool = False):
    """TINY_MODEL with cross-attention (at the second level and in the middle block) on ``dim``-d text."""
    unet = dataclasses.replace(TINY_MODEL.unet, attention_levels=(False, True), with_conditioning=True,
                               cross_attention_dim=dim, text_in_time_embedding=text_in_time_embedding)
    return dataclasses.replace(TINY_MODEL, unet=unet)


@pytest.fixture
def fake_encoder(monkeypatch):
    """A ``FakeEncoder`` that ``ldp_med.models.text.load_text_encoder`` returns for this test."""
    from ldp_med.models import text

    enc = FakeEncoder()
    monkeypatch.setattr(text, "load_text_encoder", lambda: enc)
    return enc
