"""Model folders: ``config.json`` beside ``vae.safetensors`` and ``unet.safetensors`` (no pickles, no network).

Nothing in a model folder can run code: weights are read only with safetensors, never ``torch.load`` or
``pickle``, and a folder holding a pickle (found by suffix or by its magic bytes, under any name) is refused.

``save_pretrained`` writes one atomically (a temporary folder renamed into place); ``load_pretrained``
reads one, by default the model shipped inside the package (``ldp_med/weights/default``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import ldp_med
from ldp_med.config import ModelConfig, from_dict, to_dict
from ldp_med.errors import ConfigError, InputError, one_line
from ldp_med.models.builders import build_unet, build_vae, check_model_config

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "weights" / "default"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
FILES = {"vae": "vae.safetensors", "unet": "unet.safetensors"}


@dataclass
class Prior:
    """A loaded latent diffusion prior: config, VAE and latent UNet (eval mode), and extra tensors."""

    config: ModelConfig
    vae: torch.nn.Module
    unet: torch.nn.Module | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None

    def _latent_norm(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift (1, C, 1, ...), matrix (C, C)) of the map diffusion space = matrix @ (z - shift)."""
        cfg, c = self.config, z.shape[1]
        shift = torch.tensor(cfg.latent_shift or (0.0,) * c, dtype=torch.float64)
        matrix = latent_norm_matrix(cfg, c)
        if len(shift) != c or matrix.shape != (c, c):
            raise InputError(self.path, f"latent_shift / latent_channel_scale / latent_mixing have {len(shift)} / "
                                        f"{tuple(matrix.shape)} entries for {c} latent channels")
        return shift.view((1, c) + (1,) * (z.ndim - 2)), matrix

    def to_diffusion(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the standardised (or whitened) latents the UNet models."""
        shift, matrix = self._latent_norm(z)
        return mix_channels(matrix, z - shift.to(z))

    def from_diffusion(self, zn: torch.Tensor) -> torch.Tensor:
        """Standardised latents -> VAE latents (inverse of :meth:`to_diffusion`)."""
        shift, matrix = self._latent_norm(zn)
        return mix_channels(torch.linalg.inv(matrix), zn) + shift.to(zn)

    def support(self) -> torch.Tensor | None:
        """Where the training images have anatomy, (*grid) in [0, 1] on the model grid (trilinear from the
        ``support`` extra kept at latent resolution), or None for a model folder without one."""
        s = self.extras.get("support")
        if s is None:
            return None
        return torch.nn.functional.interpolate(s.float()[None, None], size=tuple(self.config.grid), mode="trilinear",
                                               align_corners=False)[0, 0].clamp(0, 1)

    def to(self, device: torch.device | str) -> "Prior":
        """Move the networks and extras to ``device``; the VAE's 3-D convolution weights go channels-last (their
        outputs agree to 5e-4, the decoder runs 0.40 -> 0.26 s on 2 CPU cores; the UNet gains nothing: session 27)."""
        self.vae.to(device, memory_format=torch.channels_last_3d)
        if self.unet is not None:
            self.unet.to(device)
        self.extras = {k: v.to(device) for k, v in self.extras.items()}
        return self


def latent_norm_matrix(cfg: ModelConfig, channels: int) -> torch.Tensor:
    """The (C, C) float64 matrix of ``cfg``'s latent normalisation (``latent_mixing``, or the diagonal of
    ``latent_channel_scale``; identity where neither is set), times ``latent_scale_factor``."""
    if cfg.latent_mixing:
        matrix = torch.tensor(cfg.latent_mixing, dtype=torch.float64)
    else:
        matrix = torch.diag(torch.tensor(cfg.latent_channel_scale or (1.0,) * channels, dtype=torch.float64))
    return matrix * cfg.latent_scale_factor


def mix_channels(matrix: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``matrix @ z`` over the channel axis of (B, C, ...) latents, in z's dtype and device."""
    return torch.einsum("dc,bc...->bd...", matrix.to(dtype=z.dtype, device=z.device), z)


def save_pretrained(folder: str | os.PathLike, cfg: ModelConfig, vae: torch.nn.Module,
                    unet: torch.nn.Module | None = None, extras: dict[str, torch.Tensor] | None = None,
                    force: bool = False) -> Path:
    """Write ``config.json``, ``vae.safetensors`` (+ ``unet.safetensors``, ``extras.safetensors``)."""
    folder = Path(folder)
    if folder.exists() and not force:
        raise InputError(folder, "model folder exists; use --force to overwrite")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        data = to_dict(cfg)
        data["ldp_med_version"] = ldp_med.__version__
        (tmp / "config.json").write_text(json.dumps(data, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}, tmp / FILES["vae"])
        if unet is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in unet.state_dict().items()}, tmp / FILES["unet"])
        if extras:
            save_file({k: v.detach().contiguous().cpu() for k, v in extras.items()}, tmp / "extras.safetensors")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON object."""
    return len(head) >= 9 and 8 + int.from_bytes(head[:8], "little") <= size and head[8:9] == b"{"


def pickle_kind(head: bytes, size: int) -> str | None:
    """What executable serialisation the first bytes of a file announce, or None.

    Recognised: a zip archive (``torch.save`` since PyTorch 1.6, ``PK\\x03\\x04``) and a binary pickle
    (``\\x80`` then protocol 2-5: legacy ``torch.save``, ``pickle.dump``, joblib). A valid safetensors
    header wins, so an 8-byte header length that happens to start with ``\\x80`` is not a pickle.
    """
    if _is_safetensors(head, size):
        return None
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save format, which runs pickled code)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]}), which can run code when loaded"
    return None


def _refuse_pickles(folder: Path) -> None:
    """Every file of the folder, whatever its name: pickles are refused by suffix and by their magic bytes."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise InputError(path, "refusing a pickle file; model folders hold config.json and *.safetensors only")
        try:
            with open(path, "rb") as f:
                head = f.read(16)
            kind = pickle_kind(head, path.stat().st_size)
        except OSError as exc:
            raise InputError(path, f"unreadable file in model folder ({exc.strerror})") from None
        if kind:
            raise InputError(path, f"refusing {kind}; model folders hold config.json and *.safetensors only")


def read_config(folder: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` of a model folder, strictly checked.

    Raises:
        InputError: naming the folder or file: no such folder, a pickle anywhere in it (by suffix or by its
            magic bytes), a missing or unparsable config.json, or a config that does not validate.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "model folder does not exist")
    _refuse_pickles(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(folder, "missing config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(path, f"unreadable JSON ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, got {type(data).__name__}")
    if isinstance(data.get("vae"), dict):  # keys that older folders lack, at the values they were trained with:
        data["vae"].setdefault("shortcut", False)  # before the shortcut VAE, a plain AutoencoderKL
        data["vae"].setdefault("shortcut_map", "average")  # before the PCA map, DC-AE's average map
    try:
        cfg = from_dict(ModelConfig, data)
        check_model_config(cfg)
    except (ConfigError, ValueError, TypeError) as exc:
        raise InputError(path, one_line(exc)) from None
    _check_numbers(cfg, path)
    return cfg


def _check_numbers(cfg: ModelConfig, path: Path) -> None:
    """The model grid's numbers: a positive grid and voxel size, finite latent statistics and affine."""
    if min(cfg.grid) < 1 or not (math.isfinite(cfg.voxel_mm) and cfg.voxel_mm > 0):
        raise InputError(path, f"grid {tuple(cfg.grid)} and voxel_mm {cfg.voxel_mm} must be positive and finite")
    if not (math.isfinite(cfg.latent_scale_factor) and cfg.latent_scale_factor > 0):
        raise InputError(path, f"latent_scale_factor must be positive and finite, got {cfg.latent_scale_factor}")
    values = [*cfg.latent_shift, *cfg.latent_channel_scale, *(v for row in cfg.latent_mixing for v in row),
              *(v for row in cfg.affine for v in row)]
    if not all(math.isfinite(float(v)) for v in values):
        raise InputError(path, "latent_shift, latent_channel_scale, latent_mixing and affine must hold finite numbers")
    if cfg.latent_mixing and cfg.latent_channel_scale:
        raise InputError(path, "latent_channel_scale and latent_mixing are alternatives: give one")
    if cfg.latent_mixing:
        rows = cfg.latent_mixing
        if any(len(row) != len(rows) for row in rows) or \
                torch.linalg.matrix_rank(torch.tensor(rows, dtype=torch.float64)) < len(rows):
            raise InputError(path, f"latent_mixing must be an invertible square matrix, got rows of lengths "
                                   f"{sorted({len(row) for row in rows})} for {len(rows)} rows")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file (which cannot run code); any failure names the file."""
    try:
        return load_file(path)
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ValueError, RuntimeError for bad dtypes
        raise InputError(path, f"unreadable safetensors file ({one_line(exc)})") from None


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise InputError(path.parent, f"missing {path.name}")
    state = _read_safetensors(path)
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0]
        raise InputError(path, f"weights do not match config.json ({detail})") from None
    for name, t in state.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise InputError(path, f"non-finite values in {name}")


def load_pretrained(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    with_unet: bool = True) -> Prior:
    """Load a model folder (default: the model shipped with ldp-med); no network, no pickles.

    Args:
        path: model folder; None means ``ldp_med/weights/default``.
        with_unet: False loads only the VAE (e.g. for ``autoencode`` before a prior exists).
    """
    folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
    cfg = read_config(folder)
    vae = build_vae(cfg.vae)
    _load_weights(vae, folder / FILES["vae"])
    unet = None
    if with_unet:
        unet = build_unet(cfg.unet, cfg.vae.latent_channels)
        _load_weights(unet, folder / FILES["unet"])
    extras = {}
    if (folder / "extras.safetensors").is_file():
        extras = _read_safetensors(folder / "extras.safetensors")
    prior = Prior(cfg, vae.eval(), None if unet is None else unet.eval(), extras, folder)
    return prior.to(device)


def describe(path: str | os.PathLike | None = None) -> dict:
    """A summary of a model folder for ``ldp-med info``."""
    folder = Path(path) if path is not None else DEFAULT_MODEL_DIR
    cfg = read_config(folder)
    has_unet = (folder / FILES["unet"]).is_file()
    prior = load_pretrained(folder, with_unet=has_unet)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {
        "model": str(folder),
        "grid": "x".join(map(str, cfg.grid)),
        "voxel_mm": cfg.voxel_mm,
        "latent_shape": "x".join(map(str, cfg.latent_shape)),
        "vae_factor": cfg.vae_factor,
        "latent_scale_factor": round(cfg.latent_scale_factor, 6),
        "classes": ", ".join(cfg.class_names),
        "vae_parameters": count(prior.vae),
        "unet_parameters": count(prior.unet) if prior.unet is not None else 0,
        "weights_MiB": round(size / 2**20, 2),
        "training_data": cfg.training_data,
        "ldp_med_version": cfg.ldp_med_version,
    }
