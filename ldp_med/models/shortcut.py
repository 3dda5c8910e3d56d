"""MONAI's ``AutoencoderKL`` with space-to-channel residual shortcuts (DC-AE style "residual autoencoding").

Chen et al., "Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models", ICLR 2025:
the encoder's latent mean is added to a fixed, nearly lossless map of the input (its ``f x f x f``
sub-voxels gathered into channels by pixel-unshuffle, averaged down to the latent channel count), and
the decoder's output is added to the pixel-shuffle of the latent repeated back up to ``f^3`` channels.
The networks learn residuals around that map: cheap to train on a CPU, and more latent channels buy
fidelity at the same spatial compression. MONAI's networks, pixel-(un)shuffle and forward are reused.
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL
from monai.networks.utils import pixelshuffle, pixelunshuffle


def space_to_channel(x: torch.Tensor, factor: int, channels: int) -> torch.Tensor:
    """(B, 1, X, Y, Z) -> (B, channels, X/f, Y/f, Z/f): pixel-unshuffle, then the mean of each group
    of ``f^3 / channels`` consecutive sub-voxel channels."""
    u = pixelunshuffle(x, spatial_dims=3, scale_factor=factor)
    b, c, *grid = u.shape
    return u.reshape(b, channels, c // channels, *grid).mean(2)


def channel_to_space(z: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, x, y, z) -> (B, 1, x*f, y*f, z*f): each channel repeated ``f^3 / C`` times, then
    pixel-shuffle; the right inverse of :func:`space_to_channel` (``s2c(c2s(z)) == z``)."""
    reps = factor**3 // z.shape[1]
    return pixelshuffle(z.repeat_interleave(reps, dim=1), spatial_dims=3, scale_factor=factor)


class ShortcutAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` (one image channel) whose encode/decode learn residuals around the shortcut maps.

    Args:
        factor: spatial down-sampling per axis (``2 ** (len(channels) - 1)``); ``factor**3`` must be a
            multiple of ``latent_channels``.
        **kwargs: MONAI ``AutoencoderKL`` arguments.
    """

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        if kwargs.get("in_channels", 1) != 1 or kwargs.get("out_channels", 1) != 1:
            raise ValueError("the shortcut VAE takes one image channel")
        if factor**3 % kwargs["latent_channels"]:
            raise ValueError(f"latent_channels {kwargs['latent_channels']} does not divide {factor}^3 = {factor**3}")
        self.factor = factor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_mu, z_sigma = super().encode(x)
        return z_mu + space_to_channel(x, self.factor, z_mu.shape[1]), z_sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z) + channel_to_space(z, self.factor)
