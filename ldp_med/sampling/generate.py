"""Class- and text-conditional generation with classifier-free guidance: our loop, MONAI's DDIM scheduler.

MONAI's inferer ``sample()`` does not pass class labels, so the loop is ours. Conditions: a class
index per sample, or the null class (index ``len(class_names)``) for unconditional samples.
A text-conditioned prior (``unet.with_conditioning``) also takes a context (B, 1, dim) through
cross-attention: a prompt's sentence embedding (with the null class), the class's caption-mean
embedding from the model folder's ``class_context`` extra (for a class label), or zeros (null).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ldp_med.config import DEFAULT_GUIDANCE
from ldp_med.models.builders import build_ddim_scheduler
from ldp_med.models.pretrained import Prior


def null_class(prior: Prior) -> int:
    """The class index that means "no condition" (trained with condition dropout)."""
    return len(prior.config.class_names)


def is_text_conditioned(prior: Prior) -> bool:
    """Whether the prior's UNet takes a text context through cross-attention."""
    return bool(prior.config.unet.with_conditioning)


def label_context(prior: Prior, labels: torch.Tensor) -> torch.Tensor:
    """Context (B, 1, dim) of class labels for a text-conditioned prior: ``extras["class_context"][labels]``.

    The null class maps to the null embedding (zeros). Without the extra (a folder saved by hand),
    every label gets zeros.

    Raises:
        InputError: the extra's shape does not match the classes and ``cross_attention_dim``.
    """
    dim = prior.config.unet.cross_attention_dim
    table = prior.extras.get("class_context")
    if table is None:
        return torch.zeros(len(labels), 1, dim, device=labels.device)
    if tuple(table.shape) != (null_class(prior) + 1, 1, dim):
        from ldp_med.errors import InputError

        raise InputError(prior.path, f"class_context has shape {tuple(table.shape)}, expected "
                                     f"({null_class(prior) + 1}, 1, {dim})")
    return table.to(labels.device, torch.float32)[labels]


def guided_prediction(prior: Prior, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                      guidance: float, context: torch.Tensor | None = None) -> torch.Tensor:
    """UNet output with classifier-free guidance: ``u + w (c - u)``; one batched call for both branches.

    Args:
        z: (B, C, x, y, z) scaled latents; t: (B,) timesteps; labels: (B,) class indices.
        guidance: w; 1 means plain conditional; the null class with a null (zero) context is unconditional.
        context: (B, 1, dim) text context of a text-conditioned prior; None means the labels' class
            context (:func:`label_context`). The unconditional branch gets the null class and zeros.
            Ignored (must be None) for a class-only prior.
    """
    null = torch.full_like(labels, null_class(prior))
    if not is_text_conditioned(prior):
        if context is not None:
            raise ValueError("context given to a prior without text conditioning")
        if guidance == 1.0 or bool((labels == null).all()):
            return prior.unet(z, t, class_labels=labels)
        out = prior.unet(torch.cat([z, z]), torch.cat([t, t]), class_labels=torch.cat([labels, null]))
    else:
        context = label_context(prior, labels) if context is None else context.to(z.device, z.dtype)
        if guidance == 1.0 or (bool((labels == null).all()) and not bool(context.any())):
            return prior.unet(z, t, context=context, class_labels=labels)
        out = prior.unet(torch.cat([z, z]), torch.cat([t, t]), context=torch.cat([context, torch.zeros_like(context)]),
                         class_labels=torch.cat([labels, null]))
    cond, uncond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample_latents(prior: Prior, labels: torch.Tensor, steps: int = 50, guidance: float = DEFAULT_GUIDANCE,
                   generator: torch.Generator | None = None, progress: bool = True,
                   context: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (eta 0) samples of the latent prior; returns unscaled latents (B, C, x, y, z) for the decoder.

    Args:
        labels: (B,) class indices (the null class for unconditional or prompt-only samples).
        context: (B, 1, dim) text context for a text-conditioned prior (see :func:`guided_prediction`).
    """
    device = next(prior.unet.parameters()).device
    sched = build_ddim_scheduler(prior.config.scheduler, steps)
    shape = (len(labels), *prior.config.latent_shape)
    z = torch.randn(shape, generator=generator).to(device)
    labels = labels.to(device)
    context = None if context is None else context.to(device, torch.float32)
    for t in tqdm(sched.timesteps, desc="ddim", disable=not progress):
        tt = torch.full((len(labels),), int(t), device=device, dtype=torch.long)
        pred = guided_prediction(prior, z, tt, labels, guidance, context)
        z, _ = sched.step(pred, int(t), z)
    return prior.from_diffusion(z)


@torch.no_grad()
def decode(prior: Prior, latents: torch.Tensor) -> torch.Tensor:
    """Decode latents one at a time (memory) to images (B, X, Y, Z), clamped to [0, 1]."""
    out = [prior.vae.decode(latents[i : i + 1])[0, 0] for i in range(len(latents))]
    return torch.stack(out).clamp(0, 1).cpu()


def generate(n: int = 1, contrast: str | None = None, prompt: str | None = None, guidance: float = DEFAULT_GUIDANCE,
             steps: int = 50, seed: int = 0, device: str = "cpu", model: str | None = None,
             prior: Prior | None = None, progress: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Generate ``n`` volumes of the prior: class-conditional (``contrast``), text-conditional
    (``prompt``, text-conditioned priors only) or unconditional (neither).

    A prompt is embedded by :func:`ldp_med.models.text.load_text_encoder` (the ``text`` extra) and
    sampled with the null class; ``contrast`` on a text-conditioned prior uses the class's stored
    caption-mean embedding, so it needs no text encoder.

    Returns:
        (images float32 (n, X, Y, Z) in [0, 1] on the model grid, the model grid's affine (4, 4)).

    Raises:
        InputError: unknown contrast, both contrast and prompt, an empty prompt, or a prompt for a model
            without text conditioning.
        LdpError: a prompt without the ``text`` extra installed (the message names the extra).
    """
    from ldp_med.errors import InputError
    from ldp_med.models.pretrained import load_pretrained

    if n < 1:
        raise InputError(None, f"-n must be >= 1, got {n}")
    if contrast and prompt:
        raise InputError(None, "give --contrast or --prompt, not both")
    if prompt is not None and not prompt.strip():
        raise InputError(None, "--prompt is empty")
    prior = prior or load_pretrained(model, device=device)
    names = prior.config.class_names
    if prompt and not is_text_conditioned(prior):
        raise InputError(None, "this model has no text conditioning; use --contrast (text prompts need a prior trained with captions)")
    if contrast is not None and contrast not in names:
        raise InputError(None, f"unknown contrast {contrast!r}; the model knows {', '.join(names)}")
    label = names.index(contrast) if contrast is not None else null_class(prior)
    context = prompt_context(prior, prompt, n) if prompt else None
    gen = torch.Generator().manual_seed(seed)
    z = sample_latents(prior, torch.full((n,), label, dtype=torch.long), steps, guidance, gen, progress, context)
    imgs = decode(prior, z)
    if not torch.isfinite(imgs).all():
        from ldp_med.errors import LdpError

        raise LdpError("the prior produced non-finite values")
    affine = np.asarray(prior.config.affine, dtype=np.float64) if prior.config.affine else np.eye(4)
    return imgs, affine


def prompt_context(prior: Prior, prompt: str, n: int) -> torch.Tensor:
    """Context (n, 1, dim) of ``prompt`` for a text-conditioned prior, from the ``text`` extra's encoder.

    Raises:
        LdpError: the extra is missing; InputError: the encoder differs from the one the prior was trained with.
    """
    from ldp_med.errors import InputError
    from ldp_med.models.text import load_text_encoder

    encoder = load_text_encoder()
    trained = prior.config.text_encoder
    dim = prior.config.unet.cross_attention_dim
    if (trained and encoder.name != trained) or encoder.dim != dim:
        raise InputError(prior.path, f"the prior was trained with text encoder {trained or '?'} ({dim}-d), "
                                     f"not {encoder.name} ({encoder.dim}-d)")
    emb = encoder.embed([prompt]).float()
    return emb.reshape(1, 1, dim).expand(n, 1, dim).contiguous()
