"""Class-conditional DDIM sampling with classifier-free guidance on a tiny untrained prior."""

from __future__ import annotations

import pytest
import torch

from ldp_med.models.builders import build_models
from ldp_med.models.pretrained import Prior
from ldp_med.sampling.generate import decode, guided_prediction, sample_latents
from tests.training.test_training import TINY_MODEL


@pytest.fixture
def prior():
    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    return Prior(TINY_MODEL, vae.eval(), unet.eval())


def test_samples_are_finite_shaped_and_seeded(prior):
    labels = torch.tensor([0, 3, 4])
    z1 = sample_latents(prior, labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(1), progress=False)
    z2 = sample_latents(prior, labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(1), progress=False)
    z3 = sample_latents(prior, labels, steps=4, guidance=3.0, generator=torch.Generator().manual_seed(2), progress=False)
    assert z1.shape == (3, *TINY_MODEL.latent_shape)
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    imgs = decode(prior, z1)
    assert imgs.shape == (3, *TINY_MODEL.grid) and torch.isfinite(imgs).all()
    assert imgs.min() >= 0 and imgs.max() <= 1


@torch.no_grad()
def test_guidance_combines_conditional_and_unconditional(prior):
    z = torch.randn(2, *TINY_MODEL.latent_shape)
    t = torch.tensor([10, 500])
    labels = torch.tensor([1, 2])
    null = torch.full_like(labels, 4)
    cond = prior.unet(z, t, class_labels=labels)
    uncond = prior.unet(z, t, class_labels=null)
    got = guided_prediction(prior, z, t, labels, 3.0)
    torch.testing.assert_close(got, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided_prediction(prior, z, t, labels, 1.0), cond)
