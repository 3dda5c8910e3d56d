"""Latent diffusion prior training: encode the training images once, cache the latents, train the UNet."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ldp_med.config import PriorTrainConfig
from ldp_med.data.cohort import load_training_images
from ldp_med.errors import InputError
from ldp_med.models.builders import build_train_scheduler, build_unet
from ldp_med.models.pretrained import load_pretrained, save_pretrained
from ldp_med.training.distributed import DistInfo, barrier
from ldp_med.training.loop import Trainer, params_digest


@torch.no_grad()
def encode_images(vae: torch.nn.Module, images: torch.Tensor, progress: bool = True) -> torch.Tensor:
    """Posterior means ``z_mu`` (N, C, x, y, z) float32 of float16 images (N, 1, X, Y, Z), one at a time."""
    out = [vae.encode(images[i : i + 1].float())[0] for i in tqdm(range(len(images)), desc="encode", disable=not progress)]
    return torch.cat(out)


def cached_latents(vae: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, path: Path,
                   progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of ``images``, read from ``path`` when it was written for the same VAE and images."""
    key = params_digest(vae)[:16] + f"-{len(images)}-{float(images.float().mean()):.6f}"
    if path.is_file():
        cached = load_file(path)
        if bytes(cached["key"].tolist()).decode() == key:
            return cached["latents"], cached["labels"]
    latents = encode_images(vae, images, progress)
    save_file({"latents": latents.contiguous(), "labels": labels.contiguous(),
               "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, path)
    return latents, labels


def diffusion_loss(cfg: PriorTrainConfig, null_class: int):
    """``(unet, batch) -> (loss, logs)``: DDPM noise-prediction MSE with class-condition dropout."""
    scheduler = build_train_scheduler(cfg.model.scheduler)

    def loss_fn(unet: torch.nn.Module, batch: dict):
        z0, labels, gen_noise = batch["latent"], batch["label"], batch["noise"]
        t, drop = batch["timesteps"], batch["drop"]
        labels = torch.where(drop | (labels < 0), torch.full_like(labels, null_class), labels)
        zt = scheduler.add_noise(z0, gen_noise, t)
        pred = unet(zt, t, class_labels=labels)
        if cfg.model.scheduler.prediction_type == "v_prediction":
            target = scheduler.get_velocity(z0, gen_noise, t)
        elif cfg.model.scheduler.prediction_type == "sample":
            target = z0
        else:
            target = gen_noise
        loss = torch.nn.functional.mse_loss(pred, target)
        return loss, {}

    return loss_fn


def latent_sampler(latents: torch.Tensor, labels: torch.Tensor, batch_size: int, num_timesteps: int, dropout: float):
    """A batch function drawing latents, their labels, noise, timesteps and condition-dropout flags."""

    def batch_fn(gen: torch.Generator) -> dict:
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        z0 = latents[idx]
        return {
            "latent": z0,
            "label": labels[idx],
            "noise": torch.randn(z0.shape, generator=gen),
            "timesteps": torch.randint(num_timesteps, (batch_size,), generator=gen),
            "drop": torch.rand(batch_size, generator=gen) < dropout,
        }

    return batch_fn


def train_prior(cfg: PriorTrainConfig, vae_dir: str | os.PathLike, out_dir: str | os.PathLike, info: DistInfo,
                resume: bool = False, progress: bool = True, max_seconds: float | None = None,
                stop_after: int | None = None) -> Path | None:
    """Train the latent UNet on top of the VAE in ``vae_dir``; writes the full model folder ``<out_dir>/model``."""
    vae_prior = load_pretrained(vae_dir, with_unet=False)
    vcfg = vae_prior.config
    if tuple(vcfg.grid) != tuple(cfg.model.grid) or vcfg.vae != cfg.model.vae:
        raise InputError(vae_dir, "the VAE's grid or architecture differs from the prior config's model")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    show = progress and info.is_main
    data = load_training_images(cfg.data, cfg.model, progress=show)
    latent_path = out / "latents.safetensors"
    if info.is_main:
        cached_latents(vae_prior.vae, data.images, data.labels, latent_path, show)
    barrier(info)
    latents, labels = cached_latents(vae_prior.vae, data.images, data.labels, latent_path, False)
    scale = float(1.0 / latents.std())
    null_class = len(cfg.model.class_names)
    if cfg.model.unet.num_class_embeds is not None and cfg.model.unet.num_class_embeds != null_class + 1:
        raise InputError(None, f"unet.num_class_embeds must be {null_class + 1} (classes + the null class)")
    torch.manual_seed(cfg.loop.seed)
    unet = build_unet(cfg.model.unet, cfg.model.vae.latent_channels)
    sampler = latent_sampler(latents * scale, labels, cfg.loop.batch_size, cfg.model.scheduler.num_train_timesteps,
                             cfg.cond_dropout)
    trainer = Trainer(unet, sampler, diffusion_loss(cfg, null_class), cfg.loop, out, info, progress=progress)
    unet = trainer.run(resume=resume, max_seconds=max_seconds, stop_after=stop_after)
    if not trainer.finished:
        return None
    folder = out / "model"
    if info.is_main:
        model_cfg = replace(cfg.model, latent_scale_factor=scale, affine=vcfg.affine,
                            training_data=vcfg.training_data or data.description)
        save_pretrained(folder, model_cfg, vae_prior.vae, unet, force=True)
    return folder
