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
from ldp_med.models.shortcut import ShortcutAutoencoderKL, channel_to_space, space_to_channel
from ldp_med.training.distributed import DistInfo
from ldp_med.training.vae import train_vae
from tests.conftest import TINY_MODEL, vae_cfg

SHORTCUT = dataclasses.replace(TINY_MODEL, vae=dataclasses.replace(TINY_MODEL.vae, shortcut=True))


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


def test_zeroed_networks_leave_exactly_the_shortcut():
    vae = build_vae(dataclasses.replace(SHORTCUT.vae, latent_channels=64))
    assert isinstance(vae, ShortcutAutoencoderKL)
    for conv in (vae.quant_conv_mu, vae.decoder.blocks[-1]):
        for p in conv.parameters():
            torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 12, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(vae.encode(x)[0]), x, rtol=0, atol=1e-6)


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


def test_resume_from_a_copied_checkpoint_equals_an_uninterrupted_run(tmp_path, cohort_dir):
    """A checkpoint committed on one machine and resumed from a fresh clone continues exactly."""
    cfg = dataclasses.replace(vae_cfg(cohort_dir), model=SHORTCUT)
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
