"""The default model ships inside the package and loads offline."""

from __future__ import annotations

import torch

from ldp_med.models.pretrained import DEFAULT_MODEL_DIR, describe, load_pretrained


def test_shipped_model_loads_and_fits_the_budget():
    prior = load_pretrained()
    cfg = prior.config
    assert cfg.grid == (96, 112, 96) and cfg.voxel_mm == 2.0 and cfg.vae_factor == 4
    assert cfg.class_names == ("T1w", "T2w", "PD", "FLAIR") and cfg.latent_scale_factor > 0
    assert len(cfg.affine) == 4 and "synthetic" in cfg.training_data
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.glob("*.safetensors"))
    assert size <= 30 * 2**20
    assert describe()["unet_parameters"] > 0


@torch.no_grad()
def test_shipped_unet_runs_on_the_latent_grid():
    prior = load_pretrained()
    z = torch.zeros(1, *prior.config.latent_shape)
    null = torch.tensor([len(prior.config.class_names)])
    assert prior.config.unet.with_conditioning  # the default takes caption embeddings too
    table = prior.extras["class_context"]
    assert table.shape == (len(prior.config.class_names) + 1, 1, prior.config.unet.cross_attention_dim)
    assert not table[-1].any() and bool((table[:-1].norm(dim=-1) > 0).all())  # null row zero, classes not
    out = prior.unet(z, torch.tensor([500]), context=table[null], class_labels=null)
    assert out.shape == z.shape and torch.isfinite(out).all()
