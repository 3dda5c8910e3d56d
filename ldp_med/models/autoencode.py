"""Encode and decode a volume through the VAE, on the model grid, and return it in acquisition space."""

from __future__ import annotations

import torch

from ldp_med.space import ToModelSpace
from ldp_med.errors import LdpError
from ldp_med.io.volume import Volume
from ldp_med.models.pretrained import Prior


@torch.no_grad()
def autoencode_volume(prior: Prior, volume: Volume, align: bool = False) -> Volume:
    """Preprocess ``volume`` to the model grid, encode (posterior mean), decode, and map back.

    Args:
        align: place the model grid by registration to the model space (:mod:`ldp_med.align`) instead
            of centring the field of view; the estimated transform goes into the output's metadata.

    Returns:
        a Volume with the input's shape, affine and intensity units.
    """
    device = next(prior.vae.parameters()).device
    extra = {}
    transform = None
    if align:
        from ldp_med.align import estimate_alignment

        alignment = estimate_alignment(volume)
        transform, extra = alignment.matrix, alignment.to_meta()
    x, info = ToModelSpace.from_config(prior.config, transform=transform)(volume)
    z = prior.vae.encode(x[None].to(device))[0]
    rec = prior.vae.decode(z)[0].float().cpu()
    if not torch.isfinite(rec).all():
        raise LdpError(f"{volume.meta.get('source', 'volume')}: the VAE produced non-finite values")
    data = info.to_acquisition(rec.clamp(0, None))
    return Volume(data=data, affine=volume.affine, meta={**volume.meta, "method": "autoencode", **extra})
