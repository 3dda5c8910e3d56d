"""VAE training on random 3-D patches of the training images (whole volumes are far too slow on CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ldp_med.config import VAETrainConfig
from ldp_med.data.cohort import load_training_images
from ldp_med.errors import InputError
from ldp_med.models.builders import build_vae
from ldp_med.models.pretrained import save_pretrained
from ldp_med.training.distributed import DistInfo
from ldp_med.training.loop import Trainer


def patch_sampler(images: torch.Tensor, patch: int, batch_size: int, foreground_fraction: float = 0.7,
                  whole_from_step: int | None = None, fg_threshold: float = 0.1,
                  noise_free: tuple[torch.Tensor, torch.Tensor] | None = None):
    """A batch function ``(generator, step) -> {"image": (B, 1, p, p, p)}`` of random crops.

    With probability ``foreground_fraction`` a crop is centred on a random voxel above
    ``fg_threshold`` (of the mean image), otherwise its corner is uniform. From step
    ``whole_from_step`` on it returns one whole volume per batch instead.

    With ``noise_free`` = (clean, expected) (shaped as ``images``) the batch also has a ``"target"``: each
    item is, with even odds, the noisy image and its Rician mean ``expected``, or the ``clean`` image and itself.
    """
    n, _, *shape = images.shape
    if any(patch > s for s in shape):
        raise ValueError(f"patch {patch} larger than the image grid {shape}")
    fg = (images[:, 0].float().mean(0) > fg_threshold).nonzero()
    if len(fg) == 0:
        foreground_fraction = 0.0

    def corner(gen: torch.Generator) -> list[int]:
        if float(torch.rand(1, generator=gen)) < foreground_fraction:
            centre = fg[int(torch.randint(len(fg), (1,), generator=gen))].tolist()
            return [min(max(c - patch // 2, 0), s - patch) for c, s in zip(centre, shape)]
        return [int(torch.randint(s - patch + 1, (1,), generator=gen)) for s in shape]

    def pair(gen: torch.Generator, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if noise_free is None:
            return images[i], images[i]
        clean, expected = noise_free
        return (images[i], expected[i]) if float(torch.rand(1, generator=gen)) < 0.5 else (clean[i], clean[i])

    def batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        out = {"image": torch.stack([x for x, _ in items]).float()}
        if noise_free is not None:
            out["target"] = torch.stack([t for _, t in items]).float()
        return out

    def batch_fn(gen: torch.Generator, step: int) -> dict:
        if whole_from_step is not None and step >= whole_from_step:
            i = int(torch.randint(n, (1,), generator=gen))
            return batch([pair(gen, i)])
        idx = torch.randint(n, (batch_size,), generator=gen)
        crops = []
        for i in idx.tolist():
            c = corner(gen)
            crops.append(tuple(v[:, c[0]:c[0] + patch, c[1]:c[1] + patch, c[2]:c[2] + patch] for v in pair(gen, i)))
        return batch(crops)

    return batch_fn


def vae_loss(cfg: VAETrainConfig):
    """``(model, batch) -> (loss, logs)``: weighted L1 + MSE reconstruction (of the batch's ``"target"`` where it
    has one, else of its input) plus KL to N(0, I)."""

    def loss_fn(model: torch.nn.Module, batch: dict):
        x = batch["image"]
        target = batch.get("target", x)
        if cfg.decoder_only or cfg.posterior_mean:  # decode the posterior mean, as inference does
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.decoder_only):  # a frozen encoder
                mu, sigma = model.encode(x)
            recon = model.decode(mu)
        else:
            recon, mu, sigma = model(x)
        l1 = (recon - target).abs().mean()
        mse = ((recon - target) ** 2).mean()
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1).sum(dim=(1, 2, 3, 4)).mean()
        loss = cfg.l1_weight * l1 + cfg.mse_weight * mse + cfg.kl_weight * kl
        psnr = -10 * torch.log10(mse.detach().clamp_min(1e-12))
        return loss, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach(), "patch_psnr": psnr}

    return loss_fn


def parameter_count(build, *args) -> int:
    """Parameters of the network ``build(*args)`` makes, built on the meta device (no memory, no RNG draws)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build(*args).parameters())


def check_vae_memory(cfg: VAETrainConfig) -> None:
    """Refuse (one line) a VAE training estimated not to fit (:func:`ldp_med.resources.vae_training_bytes`)."""
    from ldp_med.resources import check_memory, count_training_images, vae_training_bytes

    n = count_training_images(cfg.data)
    need = vae_training_bytes(n, cfg.model.grid, parameter_count(build_vae, cfg.model.vae), cfg.loop.batch_size,
                              cfg.patch, cfg.model.vae.channels, whole_volume=cfg.whole_volume_steps > 0)
    check_memory(need, f"VAE training ({n} images, batch {cfg.loop.batch_size} of {cfg.patch}^3 patches)",
                 "use a smaller batch or patch (--set loop.batch_size=2 --set patch=24), fewer images, "
                 "or whole_volume_steps=0", cfg.data.folder or None)


def train_vae(cfg: VAETrainConfig, out_dir: str | os.PathLike, info: DistInfo, resume: bool = False,
              progress: bool = True, max_seconds: float | None = None, stop_after: int | None = None,
              init: str | os.PathLike | None = None) -> Path | None:
    """Train the VAE of ``cfg.model`` and write the model folder ``<out_dir>/model`` (VAE only).

    Returns:
        the model folder, or None when training stopped early (``max_seconds``/``stop_after``).
    """
    check_vae_memory(cfg)
    data = load_training_images(cfg.data, cfg.model, progress=progress and info.is_main)
    torch.manual_seed(cfg.loop.seed)  # identical initial weights on every rank
    vae = build_vae(cfg.model.vae)
    if init and not resume:  # fine-tune from a model folder's VAE (same architecture) instead of from scratch
        from ldp_med.models.pretrained import load_pretrained

        vae.load_state_dict(load_pretrained(init, with_unet=False).vae.state_dict())
    elif not resume and hasattr(vae, "fit_shortcut"):  # a new shortcut VAE: its PCA map from the training images
        vae.fit_shortcut(data.images)
    if cfg.decoder_only:
        if not init and not resume:
            raise InputError(None, "decoder_only fine-tunes a trained VAE: give its model folder with --init")
        for module in (vae.encoder, vae.quant_conv_mu, vae.quant_conv_log_sigma):
            module.requires_grad_(False)
    whole_from = cfg.loop.steps - cfg.whole_volume_steps if cfg.whole_volume_steps > 0 else None
    noise_free = (data.clean, data.expected) if data.clean is not None else None
    sampler = patch_sampler(data.images, cfg.patch, cfg.loop.batch_size, cfg.foreground_fraction, whole_from,
                            noise_free=noise_free)
    trainer = Trainer(vae, sampler, vae_loss(cfg),
                      cfg.loop, out_dir, info, progress=progress)
    vae = trainer.run(resume=resume, max_seconds=max_seconds, stop_after=stop_after)
    if not trainer.finished:
        return None
    folder = Path(out_dir) / "model"
    if info.is_main:
        from dataclasses import replace

        from ldp_med.space import model_grid_affine

        affine = cfg.model.affine or tuple(tuple(float(v) for v in row)
                                           for row in model_grid_affine(cfg.model.grid, cfg.model.voxel_mm))
        model_cfg = replace(cfg.model, training_data=data.description, affine=affine)
        save_pretrained(folder, model_cfg, vae, force=True)
    return folder
