"""Latent diffusion prior training: encode the training images once, cache the latents, train the UNet."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ldp_med.config import ModelConfig, PriorTrainConfig
from ldp_med.data.cohort import TrainingImages, load_training_images
from ldp_med.errors import ConfigError, InputError
from ldp_med.models.builders import build_train_scheduler, build_unet
from ldp_med.models.pretrained import latent_norm_matrix, load_pretrained, mix_channels, save_pretrained
from ldp_med.training.distributed import DistInfo, barrier
from ldp_med.training.loop import Trainer, params_digest


@torch.no_grad()
def encode_images(vae: torch.nn.Module, images: torch.Tensor, progress: bool = True) -> torch.Tensor:
    """Posterior means ``z_mu`` (N, C, x, y, z) float32 (on the CPU) of float16 images (N, 1, X, Y, Z), one at a
    time on the VAE's device."""
    dev = next(vae.parameters()).device
    out = [vae.encode(images[i : i + 1].float().to(dev))[0].cpu()
           for i in tqdm(range(len(images)), desc="encode", disable=not progress)]
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


def cached_caption_embeddings(captions: list[str], path: Path) -> tuple[torch.Tensor, str]:
    """Sentence embeddings (N, dim) of ``captions`` and the encoder's name, cached in ``path``.

    The cache is keyed on the captions only, so a resumed run does not load the text encoder again;
    delete ``path`` to re-embed with another encoder. Empty captions get the null embedding (zeros).
    """
    key = hashlib.sha256("\n".join(captions).encode()).hexdigest()[:32]
    as_bytes = lambda s: torch.tensor(list(s.encode()), dtype=torch.uint8)  # noqa: E731
    if path.is_file():
        cached = load_file(path)
        if bytes(cached["key"].tolist()).decode() == key:
            return cached["embeddings"], bytes(cached["encoder"].tolist()).decode()
    from ldp_med.models.text import embed_captions, load_text_encoder

    encoder = load_text_encoder()
    emb = embed_captions(encoder, captions)
    save_file({"embeddings": emb.contiguous(), "key": as_bytes(key), "encoder": as_bytes(encoder.name)}, path)
    return emb, encoder.name


def diffusion_loss(cfg: PriorTrainConfig, null_class: int, metric: torch.Tensor | None = None):
    """``(unet, batch) -> (loss, logs)``: DDPM noise-prediction MSE with condition dropout.

    A batch with ``context`` (B, 1, dim) (text-conditioned priors) passes it to the UNet's
    cross-attention; ``drop`` replaces both the class and the context by the null condition (null
    class, zero embedding), ``text_only`` replaces the class only. ``metric`` (C, C): the error is mapped
    through it, per voxel, before squaring (:func:`latent_metric`).
    """
    scheduler = build_train_scheduler(cfg.model.scheduler)

    def loss_fn(unet: torch.nn.Module, batch: dict):
        z0, labels, gen_noise = batch["latent"], batch["label"], batch["noise"]
        t, drop = batch["timesteps"], batch["drop"]
        context = batch.get("context")
        null_label = drop | (labels < 0)
        if context is not None:
            null_label = null_label | batch["text_only"]
            context = torch.where(drop[:, None, None], torch.zeros_like(context), context)
        labels = torch.where(null_label, torch.full_like(labels, null_class), labels)
        zt = scheduler.add_noise(z0, gen_noise, t)
        pred = unet(zt, t, class_labels=labels) if context is None else unet(zt, t, context=context, class_labels=labels)
        if cfg.model.scheduler.prediction_type == "v_prediction":
            target = scheduler.get_velocity(z0, gen_noise, t)
        elif cfg.model.scheduler.prediction_type == "sample":
            target = z0
        else:
            target = gen_noise
        err = pred - target
        if metric is not None:
            err = mix_channels(metric, err)
        return err.pow(2).mean(), {}

    return loss_fn


def latent_sampler(latents: torch.Tensor, labels: torch.Tensor, batch_size: int, num_timesteps: int, dropout: float,
                   context: torch.Tensor | None = None, text_only: float = 0.0,
                   context_labels: torch.Tensor | None = None):
    """A batch function drawing latents, their labels, noise, timesteps and condition-dropout flags.

    With ``context`` (M, 1, dim) (caption embeddings) the batch also holds ``context`` and ``text_only``
    flags (drop the class, keep the caption); the draws of class-only priors are unchanged. Without
    ``context_labels`` row i of ``context`` is latent i's caption; with them (M,) ``context`` is a pool
    of class captions and each item takes a random caption of its own label.
    """
    if context_labels is not None:
        pool = {int(c): torch.nonzero(context_labels == c).flatten() for c in labels.unique()}
        if any(len(v) == 0 for v in pool.values()):
            raise ValueError("the caption pool has no caption for some training label")

    def batch_fn(gen: torch.Generator, step: int) -> dict:
        idx = torch.randint(len(latents), (batch_size,), generator=gen)
        z0 = latents[idx]
        batch = {
            "latent": z0,
            "label": labels[idx],
            "noise": torch.randn(z0.shape, generator=gen),
            "timesteps": torch.randint(num_timesteps, (batch_size,), generator=gen),
            "drop": torch.rand(batch_size, generator=gen) < dropout,
        }
        if context is not None:
            cidx = idx
            if context_labels is not None:
                rows = [pool[int(labels[i])] for i in idx.tolist()]
                cidx = torch.stack([r[torch.randint(len(r), (1,), generator=gen)][0] for r in rows])
            batch["context"] = context[cidx]
            batch["text_only"] = torch.rand(batch_size, generator=gen) < text_only
        return batch

    return batch_fn


def latent_channel_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (C,), covariance (C, C)) over every item and voxel of latents (N, C, ...), float64."""
    c = latents.shape[1]
    flat = latents.transpose(0, 1).reshape(c, -1).double()
    mean = flat.mean(dim=1)
    centred = flat - mean[:, None]
    return mean, centred @ centred.T / centred.shape[1]


def latent_normalisation(latents: torch.Tensor, kind: str) -> dict:
    """ModelConfig fields that map training latents (N, C, ...) to zero mean and unit variance.

    ``channel``: each channel standardised (the VAE's channels differ several-fold in mean and spread).
    ``whiten``: ZCA whitening, ``M = V diag(1 / sqrt(eig)) V^T`` of the channel covariance, so every principal
    component has unit variance; a shortcut VAE's channels are near copies of one another (the first component
    holds ~95% of the variance) and per-channel standardisation leaves the detail components below the
    diffusion noise of all but the last steps (docs/methods.md).
    """
    mean, cov = latent_channel_stats(latents)
    if kind == "channel":
        n = latents.numel() // latents.shape[1]  # the unbiased std of each channel, as torch.std gives it
        std = (torch.diag(cov) * n / max(n - 1, 1)).sqrt()
        return {"latent_shift": tuple(mean.tolist()), "latent_mixing": (),
                "latent_channel_scale": tuple((1.0 / std.clamp_min(1e-6)).tolist()), "latent_scale_factor": 1.0}
    eig, vec = torch.linalg.eigh(cov)
    matrix = vec @ torch.diag(eig.clamp_min(1e-12 + 1e-8 * float(eig.max())).rsqrt()) @ vec.T
    return {"latent_shift": tuple(mean.tolist()), "latent_channel_scale": (),
            "latent_mixing": tuple(tuple(row) for row in matrix.tolist()), "latent_scale_factor": 1.0}


def latent_metric(cfg: ModelConfig, floor: float = 0.0) -> torch.Tensor:
    """(C, C) map from the UNet's normalised latent back to the VAE's latent units (the inverse of ``cfg``'s
    latent normalisation), scaled so that it keeps the mean squared size of a white error: the ``latent``
    ``loss_metric``. With whitening its square G is the latents' covariance over its mean variance.
    ``floor`` f > 0: the symmetric square root of ``(1 - f) G + f I`` instead (every direction keeps weight f)."""
    inverse = torch.linalg.inv(latent_norm_matrix(cfg, cfg.vae.latent_channels)).double()
    metric = inverse / (inverse.pow(2).sum() / len(inverse)).sqrt()
    if floor > 0:
        eig, vec = torch.linalg.eigh((1 - floor) * metric.T @ metric + floor * torch.eye(len(metric), dtype=metric.dtype))
        metric = vec @ torch.diag(eig.clamp_min(0).sqrt()) @ vec.T
    return metric.float()


def check_prior_memory(cfg: PriorTrainConfig) -> None:
    """Refuse (one line) a prior training estimated not to fit (:func:`ldp_med.resources.prior_training_bytes`)."""
    import math

    from ldp_med.resources import check_memory, count_training_images, prior_training_bytes
    from ldp_med.training.vae import parameter_count

    m = cfg.model
    n = count_training_images(cfg.data)
    down = 2 ** (len(m.vae.channels) - 1)
    latent_voxels = math.prod(max(1, g // down) for g in m.grid)
    need = prior_training_bytes(n, m.grid, parameter_count(build_unet, m.unet, m.vae.latent_channels),
                                m.vae.channels[0], latent_voxels, m.vae.latent_channels, cfg.loop.batch_size,
                                m.unet.channels[0])
    check_memory(need, f"prior training ({n} images, batch {cfg.loop.batch_size})",
                 "use a smaller batch (--set loop.batch_size=2) or fewer images", cfg.data.folder or None)


def train_prior(cfg: PriorTrainConfig, vae_dir: str | os.PathLike, out_dir: str | os.PathLike, info: DistInfo,
                resume: bool = False, progress: bool = True, max_seconds: float | None = None,
                stop_after: int | None = None, init: str | os.PathLike | None = None) -> Path | None:
    """Train the latent UNet on top of the VAE in ``vae_dir``; writes the full model folder ``<out_dir>/model``."""
    vae_prior = load_pretrained(vae_dir, with_unet=False)
    vcfg = vae_prior.config
    if tuple(vcfg.grid) != tuple(cfg.model.grid) or vcfg.vae != cfg.model.vae:
        raise InputError(vae_dir, "the VAE's grid or architecture differs from the prior config's model")
    check_prior_memory(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    show = progress and info.is_main
    data = load_training_images(cfg.data, cfg.model, progress=show)
    images = data.clean if data.clean is not None else data.images  # data.noise_free: learn noise-free anatomy
    latent_path = out / "latents.safetensors"
    if info.is_main:
        cached_latents(vae_prior.vae.to(info.device), images, data.labels, latent_path, show)  # on the training device
        vae_prior.vae.cpu()
    barrier(info)
    latents, labels = cached_latents(vae_prior.vae, images, data.labels, latent_path, False)
    norm = latent_normalisation(latents, cfg.latent_norm)
    norm_cfg = replace(vcfg, **norm)
    standardised = replace(vae_prior, config=norm_cfg).to_diffusion(latents)
    null_class = len(cfg.model.class_names)
    if cfg.model.unet.num_class_embeds is not None and cfg.model.unet.num_class_embeds != null_class + 1:
        raise InputError(None, f"unet.num_class_embeds must be {null_class + 1} (classes + the null class)")
    context, context_labels, extras, text_encoder = None, None, {}, ""
    if cfg.model.unet.with_conditioning:
        context, context_labels, extras, text_encoder = _caption_context(cfg, data, labels,
                                                                         out / "captions.safetensors", info)
    extras["support"] = training_support(images, latents.shape[2:])
    torch.manual_seed(cfg.loop.seed)
    unet = build_unet(cfg.model.unet, cfg.model.vae.latent_channels)
    if init and not resume:  # fine-tune from a model folder's UNet (same architecture, or this one's minus new parts)
        _load_init(unet, load_pretrained(init).unet.state_dict(), init)
    sampler = latent_sampler(standardised, labels, cfg.loop.batch_size, cfg.model.scheduler.num_train_timesteps,
                             cfg.cond_dropout, context, cfg.text_only, context_labels)
    metric = latent_metric(norm_cfg, cfg.loss_metric_floor) if cfg.loss_metric == "latent" else None
    trainer = Trainer(unet, sampler, diffusion_loss(cfg, null_class, metric), cfg.loop, out, info, progress=progress)
    unet = trainer.run(resume=resume, max_seconds=max_seconds, stop_after=stop_after)
    if not trainer.finished:
        return None
    folder = out / "model"
    if info.is_main:
        model_cfg = replace(cfg.model, **norm, affine=vcfg.affine, text_encoder=text_encoder,
                            training_data=vcfg.training_data or data.description)
        save_pretrained(folder, model_cfg, vae_prior.vae, unet, extras=extras, force=True)
    return folder


def training_support(images: torch.Tensor, latent_grid, threshold: float = 0.05) -> torch.Tensor:
    """Per latent-grid cell, the fraction of the training images' (N, 1, *grid) voxels with anatomy (above
    ``threshold``, well over the Rician background), averaged over the images: the region the prior knows
    (``Prior.support``; the closing solve can anchor to the prior there only)."""
    fg = torch.zeros(tuple(latent_grid))
    for img in images:  # one at a time: float copies of the whole cohort would double its memory
        fg += torch.nn.functional.adaptive_avg_pool3d((img.float() > threshold).float()[None], tuple(latent_grid))[0, 0]
    return (fg / len(images)).contiguous()


def _load_init(unet: torch.nn.Module, state: dict[str, torch.Tensor], init) -> None:
    """Load ``state`` into ``unet``; parameters ``unet`` has beyond it (e.g. a zero-initialised text map)
    keep their initialisation. Anything of ``state`` that does not fit is an error."""
    own = unet.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise InputError(init, f"its UNet does not fit the config's ({len(bad)} tensors differ, e.g. {bad[0]})")
    unet.load_state_dict(state, strict=False)


def _caption_context(cfg: PriorTrainConfig, data: TrainingImages, labels: torch.Tensor, path: Path, info: DistInfo
                     ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor], str]:
    """Caption embeddings as UNet context (M, 1, dim), their labels, the ``class_context`` extra, the encoder name.

    Without ``caption_within_class`` the rows are the images' own captions (labels None). With it they
    are a pool of class captions: ``data.caption_pool`` where the data has one (the synthetic cohort:
    every wording), else the distinct captions of each labelled class.
    ``class_context`` (n_classes + 1, 1, dim): per class the re-normalised mean of its caption
    embeddings, then the null row (zeros); sampling with ``--contrast`` uses it, so it needs no encoder.
    ``caption_weight`` / ``caption_bias``: a linear contrast classifier of the same embeddings
    (:func:`ldp_med.models.text.caption_classifier`); a prompt takes the class it reads.
    """
    from ldp_med.models.text import caption_classifier, class_context

    if not 0 <= cfg.text_only <= 1 or not 0 <= cfg.cond_dropout <= 1:
        raise ConfigError("cond_dropout and text_only must lie in [0, 1]")
    captions, cap_labels = list(data.captions), labels
    if cfg.caption_within_class:
        pool = data.caption_pool or sorted({(int(lab), c) for lab, c in zip(labels.tolist(), data.captions)
                                            if lab >= 0 and c.strip()})
        captions, cap_labels = [c for _, c in pool], torch.tensor([lab for lab, _ in pool], dtype=torch.long)
        missing = sorted(set(labels.unique().tolist()) - set(cap_labels.tolist()))
        if missing:
            names = ", ".join(cfg.model.class_names[m] if 0 <= m < len(cfg.model.class_names) else "unlabelled"
                              for m in missing)
            raise InputError(cfg.data.folder or None, f"caption_within_class needs a caption for every training "
                                                      f"class; none for {names} (set caption_within_class: false)")
    if not any(c.strip() for c in captions):
        raise InputError(None, "unet.with_conditioning needs captioned training images (the synthetic cohort); "
                               "these have none")
    if info.is_main:
        cached_caption_embeddings(captions, path)
    barrier(info)
    emb, name = cached_caption_embeddings(captions, path)
    if emb.shape[1] != cfg.model.unet.cross_attention_dim:
        raise ConfigError(f"unet.cross_attention_dim is {cfg.model.unet.cross_attention_dim}, "
                          f"but the text encoder {name!r} gives {emb.shape[1]}-d embeddings")
    n_classes = len(cfg.model.class_names)
    extras = {"class_context": class_context(emb, cap_labels, n_classes),
              **caption_classifier(emb, cap_labels, n_classes, seed=cfg.loop.seed)}
    return (emb[:, None].contiguous(), cap_labels if cfg.caption_within_class else None, extras, name)
