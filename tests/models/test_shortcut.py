"""The residual space-to-channel VAE (issue 14): exact shortcut maps, training, resume, model folders."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from monai.networks.nets import AutoencoderKL
from monai.networks.utils import pixelshuffle, pixelunshuffle
from safetensors.torch import load_file

from ldp_med.errors import InputError
from ldp_med.models.builders import build_vae
from ldp_med.models.pretrained import load_pretrained, read_config, save_pretrained
from ldp_med.models.shortcut import (ShortcutAutoencoderKL, block_pca, channel_to_space, expand, project,
                                     space_to_channel)
from ldp_med.training.distributed import DistInfo
from ldp_med.training.vae import train_vae
from tests.conftest import TINY_MODEL, vae_cfg

SHORTCUT = dataclasses.replace(TINY_MODEL, vae=dataclasses.replace(TINY_MODEL.vae, shortcut=True,
                                                                   shortcut_map="average"))
PCA = dataclasses.replace(TINY_MODEL, vae=dataclasses.replace(TINY_MODEL.vae, shortcut=True, shortcut_map="pca"))


def test_pixel_unshuffle_then_shuffle_is_the_identity():
    x = torch.randn(2, 1, 8, 12, 20)
    torch.testing.assert_close(pixelshuffle(pixelunshuffle(x, 3, 4), 3, 4), x, rtol=0, atol=0)
    # 64 latent channels: no averaging, so the shortcut alone is lossless
    torch.testing.assert_close(channel_to_space(space_to_channel(x, 4, 64), 4), x, rtol=0, atol=0)
    # fewer channels: channel_to_space is a right inverse (s2c(c2s(z)) = z) and s2c averages 64/C sub-voxels
    z = torch.randn(2, 16, 2, 3, 5)
    torch.testing.assert_close(space_to_channel(channel_to_space(z, 4), 4, 16), z)
    blocks = x.reshape(2, 1, 2, 4, 3, 4, 5, 4).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(2, 2, 3, 5, 64)
    torch.testing.assert_close(space_to_channel(x, 4, 1)[:, 0], blocks.mean(-1))


@pytest.mark.parametrize("model, atol", [(SHORTCUT, 1e-6), (PCA, 1e-5)], ids=["average", "pca"])
def test_zeroed_networks_leave_exactly_the_shortcut(model, atol):
    vae = build_vae(dataclasses.replace(model.vae, latent_channels=64))
    assert isinstance(vae, ShortcutAutoencoderKL)
    vae.fit_shortcut(torch.rand(2, 1, 8, 8, 12))  # the PCA map of other images: still lossless at 64 channels
    for conv in (vae.quant_conv_mu, vae.decoder.blocks[-1]):
        for p in conv.parameters():
            torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 12, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(vae.encode(x)[0]), x, rtol=0, atol=atol)


def test_block_pca_finds_the_subspace_of_the_blocks_and_its_maps_are_inverses():
    g = torch.Generator().manual_seed(3)
    # 4x4x4 blocks that lie in a 3-dimensional affine subspace: mean + 3 fixed patterns with random weights
    patterns, offset = torch.randn(64, 3, generator=g, dtype=torch.float64), torch.randn(64, generator=g, dtype=torch.float64)
    blocks = torch.einsum("kc,ncxyz->nkxyz", patterns, torch.randn(2, 3, 3, 5, 2, generator=g, dtype=torch.float64))
    images = pixelshuffle(blocks + offset[None, :, None, None, None], 3, 4).float()  # (2, 1, 12, 20, 8)
    basis, mean = block_pca(images, 4, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    # three components hold every block exactly: the projection and expansion return the images
    torch.testing.assert_close(expand(project(images, 4, basis, mean), 4, basis, mean), images, atol=1e-4, rtol=0)
    assert not torch.allclose(expand(project(images, 4, basis[:, :2], mean), 4, basis[:, :2], mean), images, atol=1e-2)
    # a full basis is lossless for any image; fewer channels: expand is a right inverse of project
    x = torch.rand(1, 1, 8, 12, 4)
    full, m = block_pca(torch.rand(3, 1, 8, 8, 8), 4, 64)
    torch.testing.assert_close(expand(project(x, 4, full, m), 4, full, m), x, atol=1e-5, rtol=0)
    z = torch.randn(1, 16, 2, 3, 1)
    torch.testing.assert_close(project(expand(z, 4, full[:, :16], m), 4, full[:, :16], m), z, atol=1e-5, rtol=0)


def test_shortcut_needs_latent_channels_dividing_the_sub_voxels():
    with pytest.raises(ValueError, match="does not divide"):
        build_vae(dataclasses.replace(SHORTCUT.vae, latent_channels=5))


def test_tiny_shortcut_vae_trains_and_loads(tmp_path, cohort_dir):
    cfg = dataclasses.replace(vae_cfg(cohort_dir, steps=25, checkpoint_every=25, log_every=1), model=SHORTCUT)
    folder = train_vae(cfg, tmp_path, DistInfo(), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, last = sum(r["loss"] for r in rows[:5]) / 5, sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    prior = load_pretrained(folder, with_unet=False)
    assert isinstance(prior.vae, ShortcutAutoencoderKL) and prior.config.vae.shortcut
    assert json.loads((folder / "config.json").read_text())["vae"]["shortcut"] is True


def test_a_new_pca_shortcut_vae_fits_its_map_to_the_training_images_and_keeps_it(tmp_path, cohort_dir):
    cfg = dataclasses.replace(vae_cfg(cohort_dir, steps=25, checkpoint_every=25, log_every=1), model=PCA)
    folder = train_vae(cfg, tmp_path, DistInfo(), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-5:]) < 0.7 * sum(r["loss"] for r in rows[:5])
    vae = load_pretrained(folder, with_unet=False).vae
    assert vae.shortcut_map == "pca" and read_config(folder).vae.shortcut_map == "pca"
    basis = vae.shortcut_basis
    assert not torch.equal(basis, torch.eye(64)[:, :2])  # fitted, not the placeholder
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-5, rtol=0)
    assert float(vae.shortcut_mean.mean()) > 0.01  # the blocks' mean intensity of the cohort


@pytest.mark.parametrize("model", [SHORTCUT, PCA], ids=["average", "pca"])
def test_resume_from_a_copied_checkpoint_equals_an_uninterrupted_run(tmp_path, cohort_dir, model):
    """A checkpoint committed on one machine and resumed from a fresh clone continues exactly (the PCA map too)."""
    cfg = dataclasses.replace(vae_cfg(cohort_dir), model=model)
    whole, first, clone = tmp_path / "whole", tmp_path / "first", tmp_path / "clone"
    train_vae(cfg, whole, DistInfo(), progress=False)
    assert train_vae(cfg, first, DistInfo(), progress=False, stop_after=3) is None
    shutil.copytree(first / "checkpoint", clone / "checkpoint")  # only the checkpoint travels
    train_vae(cfg, clone, DistInfo(), resume=True, progress=False)
    a, b = load_file(whole / "checkpoint" / "model.safetensors"), load_file(clone / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(p.stat().st_size for p in (clone / "checkpoint").iterdir()) < 20 * 2**20


def test_old_and_new_model_folders(tmp_path):
    # a folder written before the shortcut existed (no "shortcut" key) loads as MONAI's plain AutoencoderKL
    torch.manual_seed(0)
    old = save_pretrained(tmp_path / "old", TINY_MODEL, build_vae(TINY_MODEL.vae))
    data = json.loads((old / "config.json").read_text())
    del data["vae"]["shortcut"]
    (old / "config.json").write_text(json.dumps(data))
    assert not read_config(old).vae.shortcut and type(load_pretrained(old, with_unet=False).vae) is AutoencoderKL
    # a shortcut folder saved before the PCA map existed (no "shortcut_map" key) loads with the average map
    avg = save_pretrained(tmp_path / "avg", SHORTCUT, build_vae(SHORTCUT.vae))
    data = json.loads((avg / "config.json").read_text())
    del data["vae"]["shortcut_map"]
    (avg / "config.json").write_text(json.dumps(data))
    assert load_pretrained(avg, with_unet=False).vae.shortcut_map == "average"
    # a config that says "pca" over weights without the PCA buffers: one line naming the weights file
    data["vae"]["shortcut_map"] = "pca"
    (avg / "config.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="weights do not match config.json") as err:
        load_pretrained(avg, with_unet=False)
    assert "\n" not in str(err.value)
    new = save_pretrained(tmp_path / "new", SHORTCUT, build_vae(SHORTCUT.vae))
    assert isinstance(load_pretrained(new, with_unet=False).vae, ShortcutAutoencoderKL)
    # per-level res blocks in the config that the weights do not have: one line naming the weights file
    deeper = dataclasses.replace(SHORTCUT, vae=dataclasses.replace(SHORTCUT.vae, num_res_blocks=(1, 2, 2)))
    data = json.loads((new / "config.json").read_text())
    data["vae"]["num_res_blocks"] = list(deeper.vae.num_res_blocks)
    (new / "config.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="weights do not match config.json") as err:
        load_pretrained(new, with_unet=False)
    assert "\n" not in str(err.value)


def test_the_shortcut_maps_stay_float32_under_bf16_autocast():
    vae = build_vae(dataclasses.replace(PCA.vae, latent_channels=64))
    vae.fit_shortcut(torch.rand(2, 1, 8, 8, 12))
    for conv in (vae.quant_conv_mu, vae.decoder.blocks[-1]):
        for p in conv.parameters():
            torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 12, 8, 16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        z = vae.encode(x)[0]
        out = vae.decode(z)
    assert z.dtype == out.dtype == torch.float32
    torch.testing.assert_close(out, x, rtol=0, atol=1e-5)  # bfloat16 would be 1e-2 off
