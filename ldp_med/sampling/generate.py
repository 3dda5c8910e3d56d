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
from ldp_med.models.conditioning import guided_prediction, is_text_conditioned, null_class, prompt_context, prompt_labels
from ldp_med.models.pretrained import Prior


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


def check_request(n: int, contrast: str | None, prompt: str | None) -> None:
    """Refuse (InputError, one line) a request that no model could serve, before any model is loaded."""
    from ldp_med.errors import InputError

    if n < 1:
        raise InputError(None, f"-n must be >= 1, got {n}")
    if contrast and prompt:
        raise InputError(None, "give --contrast or --prompt, not both")
    if prompt is not None and not prompt.strip():
        raise InputError(None, "--prompt is empty")


def request_conditions(prior: Prior, n: int, contrast: str | None,
                       prompt: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The class labels (n,) and text context (n, 1, dim) or None of a checked request on ``prior``.

    A prompt takes the class :func:`ldp_med.models.conditioning.prompt_labels` reads in it (the null class when
    it names none); ``contrast`` its class; neither the null class.

    Raises:
        InputError: a prompt for a model without text conditioning, or a contrast the model does not know.
    """
    from ldp_med.errors import InputError

    names = prior.config.class_names
    if prompt and not is_text_conditioned(prior):
        raise InputError(None, "this model has no text conditioning; use --contrast (text prompts need a prior trained with captions)")
    if contrast is not None and contrast not in names:
        raise InputError(None, f"unknown contrast {contrast!r}; the model knows {', '.join(names)}")
    if prompt:
        context = prompt_context(prior, prompt, n)
        return prompt_labels(prior, context), context
    return torch.full((n,), names.index(contrast) if contrast is not None else null_class(prior), dtype=torch.long), None


def generate(n: int = 1, contrast: str | None = None, prompt: str | None = None, guidance: float = DEFAULT_GUIDANCE,
             steps: int = 50, seed: int = 0, device: str = "cpu", model: str | None = None,
             prior: Prior | None = None, progress: bool = True,
             conditions: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Generate ``n`` volumes of the prior: class-conditional (``contrast``), text-conditional
    (``prompt``, text-conditioned priors only) or unconditional (neither).

    A prompt is embedded by :func:`ldp_med.models.text.load_text_encoder` (the ``text`` extra) and
    sampled with the contrast class it names (:func:`ldp_med.models.conditioning.prompt_labels`; the
    null class when it names none); ``contrast`` on a text-conditioned prior uses the class's stored
    caption-mean embedding, so it needs no text encoder. ``conditions``: the request already settled by
    :func:`request_conditions` on ``prior`` (the command line does that to report the class a prompt took).

    Returns:
        (images float32 (n, X, Y, Z) in [0, 1] on the model grid, the model grid's affine (4, 4)).

    Raises:
        InputError: unknown contrast, both contrast and prompt, an empty prompt, or a prompt for a model
            without text conditioning.
        LdpError: a prompt without the ``text`` extra installed (the message names the extra).
    """
    from ldp_med.models.pretrained import load_pretrained

    check_request(n, contrast, prompt)
    prior = prior or load_pretrained(model, device=device)
    labels, context = conditions or request_conditions(prior, n, contrast, prompt)
    gen = torch.Generator().manual_seed(seed)
    z = sample_latents(prior, labels, steps, guidance, gen, progress, context)
    imgs = decode(prior, z)
    if not torch.isfinite(imgs).all():
        from ldp_med.errors import LdpError

        raise LdpError("the prior produced non-finite values")
    affine = np.asarray(prior.config.affine, dtype=np.float64) if prior.config.affine else np.eye(4)
    return imgs, affine
