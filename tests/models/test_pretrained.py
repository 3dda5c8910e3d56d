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


class _Marker:
    """Unpickling this creates a file: proof that a loader executed code from the folder."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_payload(kind: str, marker) -> bytes:
    import io
    import pickle
    import zipfile

    if kind == "torch_zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(_Marker(marker), protocol=2))
        return buf.getvalue()
    return pickle.dumps(_Marker(marker), protocol=int(kind[-1]))


@pytest.mark.parametrize("name", ["vae.safetensors", "extras.safetensors", "notes.txt", "weights", "sub/x.dat"])
@pytest.mark.parametrize("kind", ["proto2", "proto4", "proto5", "torch_zip"])
def test_a_pickle_under_any_name_is_refused_and_never_run(folder, tmp_path, name, kind):
    marker = tmp_path / "executed"
    target = folder / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(_pickle_payload(kind, marker))
    with pytest.raises(InputError, match="refusing a") as info:
        load_pretrained(folder)
    assert info.value.path == str(target) and "\n" not in str(info.value)
    assert not marker.exists()


def test_the_loader_never_unpickles(folder, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("a model folder was unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    assert load_pretrained(folder).unet is not None
    (folder / "notes.bin.txt").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(InputError, match="pickle"):
        load_pretrained(folder)


def test_a_safetensors_header_length_starting_like_a_pickle_is_not_one():
    from ldp_med.models.pretrained import pickle_kind

    head = (0x0280).to_bytes(8, "little") + b'{"__metadata__"'
    assert head[:2] == b"\x80\x02" and pickle_kind(head, 8 + 0x0280) is None
    assert pickle_kind(b"\x80\x02}q\x00", 5) is not None and pickle_kind(b"PK\x03\x04rest", 8) is not None


@pytest.mark.parametrize("how,file,needle", [
    ("not_json", "config.json", "unreadable JSON"),
    ("json_list", "config.json", "expected a JSON object"),
    ("nan_voxel", "config.json", "voxel_mm"),
    ("truncated_vae", "vae.safetensors", "unreadable safetensors"),
    ("truncated_extras", "extras.safetensors", "unreadable safetensors"),
    ("vae_shape", "vae.safetensors", "do not match config.json"),
])
def test_broken_config_and_weights_name_the_file(folder, how, file, needle):
    from safetensors.torch import load_file, save_file

    path = folder / file
    if how == "not_json":
        path.write_text('{"grid": [24, 32')
    elif how == "json_list":
        path.write_text("[1, 2]")
    elif how == "nan_voxel":
        path.write_text(json.dumps({**json.loads(path.read_text()), "voxel_mm": float("nan")}))
    elif how.startswith("truncated"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        state = load_file(path)
        key = next(k for k, v in state.items() if v.ndim >= 2)
        state[key] = torch.zeros(*(s + 1 for s in state[key].shape))
        save_file(state, path)
    with pytest.raises(InputError, match=needle) as info:
        load_pretrained(folder)
    assert info.value.path == str(path) and "\n" not in str(info.value)
