"""Conditioning of the latent UNet: class labels, caption / prompt contexts, classifier-free guidance.

Conditions: a class index per sample, or the null class (index ``len(class_names)``) for unconditional
samples. A text-conditioned prior (``unet.with_conditioning``) also takes a context (B, 1, dim) through
cross-attention: a prompt's sentence embedding, the class's caption-mean embedding from the model
folder's ``class_context`` extra (for a class label), or zeros (null). A prompt goes with the class that
the folder's caption classifier reads in it (:func:`prompt_labels`), or with the null class when it names
none. Generation and posterior sampling both call :func:`guided_prediction`.
"""

from __future__ import annotations

import torch

from ldp_med.errors import InputError
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
        raise InputError(prior.path, f"class_context has shape {tuple(table.shape)}, expected "
                                     f"({null_class(prior) + 1}, 1, {dim})")
    return table.to(labels.device, torch.float32)[labels]


#: A prompt takes the contrast class that the caption classifier gives at least this probability (a majority);
#: below it the prompt goes with the null class and steers through its embedding alone.
PROMPT_CLASS_MIN_P = 0.5


def prompt_labels(prior: Prior, context: torch.Tensor) -> torch.Tensor:
    """Class labels (B,) for prompt contexts (B, 1, dim): the contrast the caption classifier reads in each.

    The classifier is the model folder's ``caption_weight`` / ``caption_bias`` extras (multinomial logistic
    regression on the training captions' embeddings, :func:`ldp_med.models.text.caption_classifier`). A
    prompt gets the class of highest probability when that is >= :data:`PROMPT_CLASS_MIN_P`, else the
    null class; a folder without the extras gives the null class to every prompt (the prompt alone steers).
    """
    null = torch.full((len(context),), null_class(prior), dtype=torch.long, device=context.device)
    weight, bias = prior.extras.get("caption_weight"), prior.extras.get("caption_bias")
    if weight is None or bias is None:
        return null
    prob = torch.softmax(context[:, 0].float() @ weight.to(context.device).float().T + bias.to(context.device), dim=1)
    conf, best = prob.max(1)
    return torch.where(conf >= PROMPT_CLASS_MIN_P, best, null)


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


def prompt_context(prior: Prior, prompt: str, n: int) -> torch.Tensor:
    """Context (n, 1, dim) of ``prompt`` for a text-conditioned prior, from the ``text`` extra's encoder.

    Raises:
        LdpError: the extra is missing; InputError: the encoder differs from the one the prior was trained with.
    """
    from ldp_med.models.text import load_text_encoder

    encoder = load_text_encoder()
    trained = prior.config.text_encoder
    dim = prior.config.unet.cross_attention_dim
    if (trained and encoder.name != trained) or encoder.dim != dim:
        raise InputError(prior.path, f"the prior was trained with text encoder {trained or '?'} ({dim}-d), "
                                     f"not {encoder.name} ({encoder.dim}-d)")
    emb = encoder.embed([prompt]).float()
    return emb.reshape(1, 1, dim).expand(n, 1, dim).contiguous()
