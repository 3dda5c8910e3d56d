"""MONAI's ``AutoencoderKL`` with space-to-channel residual shortcuts (DC-AE style "residual autoencoding").

Chen et al., "Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models", ICLR 2025:
the encoder's latent mean is added to a fixed, nearly lossless map of the input (its ``f x f x f``
sub-voxels gathered into channels by pixel-unshuffle, averaged down to the latent channel count), and
the decoder's output is added to the pixel-shuffle of the latent repeated back up to ``f^3`` channels.
The networks learn residuals around that map: cheap to train on a CPU, and more latent channels buy
fidelity at the same spatial compression. MONAI's networks, pixel-(un)shuffle and forward are reused.

Two fixed maps (``VAEConfig.shortcut_map``): ``"average"`` (DC-AE's: groups of ``f^3 / C`` consecutive
sub-voxels averaged, repeated back), and ``"pca"``: the ``C`` principal components of the training images'
``f x f x f`` blocks (:func:`block_pca`, fitted once before training and stored with the weights as buffers),
projected onto and expanded back (an orthonormal basis: exactly the identity when ``C = f^3``). At 16 channels
the PCA map alone keeps 32-37 dB of a validation subject against 25-27 for the average, and a VAE around it
trained 12 CPU-minutes reaches 34.3 dB against 31.7 (docs/results_vae_shortcut.md, "The PCA map").
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


def block_pca(images: torch.Tensor, factor: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``channels`` principal components of the ``factor^3`` sub-voxel blocks of ``images``.

    Args:
        images: (N, 1, X, Y, Z), each side a multiple of ``factor``.

    Returns:
        (basis (f^3, channels), orthonormal columns, largest variance first; mean (f^3,)), float32. The sign of
        each component is fixed (its largest entry positive), so the result is deterministic.
    """
    n = factor**3
    total, outer, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64), 0
    for image in images:  # one image at a time: the blocks of a whole cohort would not fit in memory
        u = pixelunshuffle(image[None].double(), spatial_dims=3, scale_factor=factor)[0].reshape(n, -1)
        total += u.sum(1)
        outer += u @ u.T
        count += u.shape[1]
    mean = total / count
    _, vectors = torch.linalg.eigh(outer / count - torch.outer(mean, mean))
    basis = vectors.flip(1)[:, :channels]
    basis = basis * torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    return basis.float(), mean.float()


def project(x: torch.Tensor, factor: int, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B, 1, X, Y, Z) -> (B, C, X/f, Y/f, Z/f): each block's coordinates in ``basis`` (f^3, C) around ``mean``."""
    u = pixelunshuffle(x, spatial_dims=3, scale_factor=factor) - mean[None, :, None, None, None]
    return torch.einsum("bkxyz,kc->bcxyz", u, basis)


def expand(z: torch.Tensor, factor: int, basis: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(B, C, x, y, z) -> (B, 1, x*f, y*f, z*f): the blocks ``basis @ z + mean``; ``project(expand(z)) == z``."""
    u = torch.einsum("bcxyz,kc->bkxyz", z, basis) + mean[None, :, None, None, None]
    return pixelshuffle(u, spatial_dims=3, scale_factor=factor)


class ShortcutAutoencoderKL(AutoencoderKL):
    """``AutoencoderKL`` (one image channel) whose encode/decode learn residuals around the shortcut maps.

    Args:
        factor: spatial down-sampling per axis (``2 ** (len(channels) - 1)``); ``factor**3`` must be a
            multiple of ``latent_channels`` (``"average"``) or at least it (``"pca"``).
        shortcut_map: ``"average"`` or ``"pca"`` (buffers ``shortcut_basis`` and ``shortcut_mean``, the identity's
            first columns and zero until :meth:`fit_shortcut`).
        **kwargs: MONAI ``AutoencoderKL`` arguments.
    """

    def __init__(self, factor: int, shortcut_map: str = "average", **kwargs):
        super().__init__(**kwargs)
        if kwargs.get("in_channels", 1) != 1 or kwargs.get("out_channels", 1) != 1:
            raise ValueError("the shortcut VAE takes one image channel")
        c = kwargs["latent_channels"]
        if shortcut_map == "average" and factor**3 % c:
            raise ValueError(f"latent_channels {c} does not divide {factor}^3 = {factor**3}")
        if shortcut_map == "pca":
            if c > factor**3:
                raise ValueError(f"latent_channels {c} exceeds {factor}^3 = {factor**3}")
            self.register_buffer("shortcut_basis", torch.eye(factor**3)[:, :c].contiguous())
            self.register_buffer("shortcut_mean", torch.zeros(factor**3))
        elif shortcut_map != "average":
            raise ValueError(f"shortcut_map must be 'average' or 'pca', got {shortcut_map!r}")
        self.factor, self.shortcut_map = factor, shortcut_map

    def fit_shortcut(self, images: torch.Tensor) -> None:
        """Set the PCA map from training images (N, 1, X, Y, Z) (:func:`block_pca`); no-op for ``"average"``."""
        if self.shortcut_map == "pca":
            basis, mean = block_pca(images, self.factor, self.shortcut_basis.shape[1])
            self.shortcut_basis.copy_(basis)
            self.shortcut_mean.copy_(mean)

    def shortcut_down(self, x: torch.Tensor) -> torch.Tensor:
        """The fixed map image -> latent, in float32 also under autocast (it carries the nearly lossless part)."""
        with torch.autocast(x.device.type, enabled=False):
            return self._shortcut_down(x.float())

    def shortcut_up(self, z: torch.Tensor) -> torch.Tensor:
        """The fixed map latent -> image (a right inverse of :meth:`shortcut_down`), in float32 also under autocast."""
        with torch.autocast(z.device.type, enabled=False):
            return self._shortcut_up(z.float())

    def _shortcut_down(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_map == "pca":
            return project(x, self.factor, self.shortcut_basis, self.shortcut_mean)
        return space_to_channel(x, self.factor, self.latent_channels)

    def _shortcut_up(self, z: torch.Tensor) -> torch.Tensor:
        if self.shortcut_map == "pca":
            return expand(z, self.factor, self.shortcut_basis, self.shortcut_mean)
        return channel_to_space(z, self.factor)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_mu, z_sigma = super().encode(x)
        return z_mu.float() + self.shortcut_down(x), z_sigma

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z).float() + self.shortcut_up(z)
