"""Class-conditional generation with classifier-free guidance: our loop, MONAI's DDIM scheduler at every step.

MONAI's inferer ``sample()`` does not pass class labels, so the loop is ours. Conditions: a class
index per sample, or the null class (index ``len(class_names)``) for unconditional samples.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ldp_med.models.builders import build_ddim_scheduler
from ldp_med.models.pretrained import Prior


def null_class(prior: Prior) -> int:
    """The class index that means "no condition" (trained with condition dropout)."""
    return len(prior.config.class_names)


def guided_prediction(prior: Prior, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                      guidance: float) -> torch.Tensor:
    """UNet output with classifier-free guidance: ``u + w (c - u)``; one batched call for both branches.

    Args:
        z: (B, C, x, y, z) scaled latents; t: (B,) timesteps; labels: (B,) class indices.
        guidance: w; 1 means plain conditional, and labels equal to the null class are unconditional.
    """
    null = torch.full_like(labels, null_class(prior))
    if guidance == 1.0 or bool((labels == null).all()):
        return prior.unet(z, t, class_labels=labels)
    out = prior.unet(torch.cat([z, z]), torch.cat([t, t]), class_labels=torch.cat([labels, null]))
    cond, uncond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.no_grad()
def sample_latents(prior: Prior, labels: torch.Tensor, steps: int = 50, guidance: float = 3.0,
                   generator: torch.Generator | None = None, progress: bool = True) -> torch.Tensor:
    """DDIM (eta 0) samples of the latent prior; returns unscaled latents (B, C, x, y, z) for the decoder."""
    device = next(prior.unet.parameters()).device
    sched = build_ddim_scheduler(prior.config.scheduler, steps)
    shape = (len(labels), *prior.config.latent_shape)
    z = torch.randn(shape, generator=generator).to(device)
    labels = labels.to(device)
    for t in tqdm(sched.timesteps, desc="ddim", disable=not progress):
        tt = torch.full((len(labels),), int(t), device=device, dtype=torch.long)
        pred = guided_prediction(prior, z, tt, labels, guidance)
        z, _ = sched.step(pred, int(t), z)
    return z / prior.config.latent_scale_factor


@torch.no_grad()
def decode(prior: Prior, latents: torch.Tensor) -> torch.Tensor:
    """Decode latents one at a time (memory) to images (B, X, Y, Z), clamped to [0, 1]."""
    out = [prior.vae.decode(latents[i : i + 1])[0, 0] for i in range(len(latents))]
    return torch.stack(out).clamp(0, 1).cpu()


def generate(n: int = 1, contrast: str | None = None, prompt: str | None = None, guidance: float = 3.0,
             steps: int = 50, seed: int = 0, device: str = "cpu", model: str | None = None,
             prior: Prior | None = None, progress: bool = True) -> tuple[torch.Tensor, "np.ndarray"]:
    """Generate ``n`` volumes of the prior: class-conditional (``contrast``) or unconditional.

    Returns:
        (images float32 (n, X, Y, Z) in [0, 1] on the model grid, the model grid's affine (4, 4)).

    Raises:
        InputError: unknown contrast, both contrast and prompt, or a prompt for a model without text conditioning.
    """
    import numpy as np

    from ldp_med.errors import InputError
    from ldp_med.models.pretrained import load_pretrained

    if n < 1:
        raise InputError(None, f"-n must be >= 1, got {n}")
    if contrast and prompt:
        raise InputError(None, "give --contrast or --prompt, not both")
    prior = prior or load_pretrained(model, device=device)
    names = prior.config.class_names
    if prompt:
        raise InputError(None, "this model has no text conditioning; use --contrast (text prompts need a prior trained with captions)")
    if contrast is not None and contrast not in names:
        raise InputError(None, f"unknown contrast {contrast!r}; the model knows {', '.join(names)}")
    label = names.index(contrast) if contrast is not None else null_class(prior)
    gen = torch.Generator().manual_seed(seed)
    z = sample_latents(prior, torch.full((n,), label, dtype=torch.long), steps, guidance, gen, progress)
    imgs = decode(prior, z)
    if not torch.isfinite(imgs).all():
        from ldp_med.errors import LdpError

        raise LdpError("the prior produced non-finite values")
    affine = np.asarray(prior.config.affine, dtype=np.float64) if prior.config.affine else np.eye(4)
    return imgs, affine
