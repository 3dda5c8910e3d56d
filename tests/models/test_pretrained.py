"""Model folders: save/load round trip and the one-line errors for bad folders."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from ldp_med.cli import cli
from ldp_med.errors import InputError
from ldp_med.models.builders import build_models
from ldp_med.models.pretrained import load_pretrained, save_pretrained
from tests.conftest import TINY_MODEL


@pytest.fixture
def folder(tmp_path):
    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    return save_pretrained(tmp_path / "model", TINY_MODEL, vae, unet, extras={"emb": torch.ones(4, 3)})


def test_round_trip_is_exact(folder):
    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    prior = load_pretrained(folder)
    for a, b in zip(vae.state_dict().values(), prior.vae.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(unet.state_dict().values(), prior.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert prior.config.grid == TINY_MODEL.grid and torch.equal(prior.extras["emb"], torch.ones(4, 3))


def test_existing_folder_needs_force(folder):
    vae, unet = build_models(TINY_MODEL)
    with pytest.raises(InputError, match="--force"):
        save_pretrained(folder, TINY_MODEL, vae, unet)
    save_pretrained(folder, TINY_MODEL, vae, unet, force=True)


def _break(folder, how):
    if how == "missing_unet":
        (folder / "unet.safetensors").unlink()
    elif how == "missing_config":
        (folder / "config.json").unlink()
    elif how == "pickle":
        torch.save({"x": torch.zeros(1)}, folder / "model.pt")
    elif how == "wrong_shapes":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["vae"]["channels"] = [8, 8, 8]
        (folder / "config.json").write_text(json.dumps(cfg))
    elif how == "unknown_key":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["surprise"] = 1
        (folder / "config.json").write_text(json.dumps(cfg))
    elif how == "garbage_weights":
        (folder / "vae.safetensors").write_bytes(b"\x00" * 100)
    elif how == "bad_grid":
        cfg = json.loads((folder / "config.json").read_text())
        cfg["grid"] = [25, 32, 24]
        (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("how", ["missing_unet", "missing_config", "pickle", "wrong_shapes", "unknown_key", "garbage_weights", "bad_grid"])
def test_bad_model_folders_give_one_line_errors(folder, how):
    _break(folder, how)
    with pytest.raises(InputError):
        load_pretrained(folder)
    if how == "missing_unet":  # a VAE-only folder is a valid model for `info` and `autoencode`
        return
    r = CliRunner().invoke(cli, ["info", "--model", str(folder)])
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_info_describes_the_model(folder):
    r = CliRunner().invoke(cli, ["info", "--model", str(folder), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["grid"] == "24x32x24" and d["latent_shape"] == "2x6x8x6" and d["unet_parameters"] > 0
