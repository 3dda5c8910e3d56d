"""Build MONAI networks and schedulers from typed configs (never re-implemented here)."""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ldp_med.config import ModelConfig, SchedulerConfig, UNetConfig, VAEConfig
from ldp_med.errors import ConfigError
from ldp_med.models.shortcut import ShortcutAutoencoderKL

def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """3-D ``AutoencoderKL`` (with residual shortcuts if ``cfg.shortcut``), 1 channel in/out."""
    nrb = cfg.num_res_blocks if isinstance(cfg.num_res_blocks, int) else tuple(cfg.num_res_blocks)
    args = dict(
        spatial_dims=3, in_channels=1, out_channels=1, channels=tuple(cfg.channels),
        latent_channels=cfg.latent_channels, num_res_blocks=nrb,
        norm_num_groups=cfg.norm_num_groups, attention_levels=tuple(cfg.attention_levels),
        with_encoder_nonlocal_attn=cfg.with_nonlocal_attn, with_decoder_nonlocal_attn=cfg.with_nonlocal_attn,
        include_fc=False,
    )
    if cfg.shortcut:
        return ShortcutAutoencoderKL(factor=2 ** (len(cfg.channels) - 1), shortcut_map=cfg.shortcut_map, **args)
    return AutoencoderKL(**args)

class TextAndClassEmbedding(torch.nn.Embedding):
    """MONAI's class embedding (same weights) plus a linear map of the caption embedding.

    The map starts at zero, so a UNet fine-tuned from one without it starts as that UNet. The caption
    (``context`` (N, L, dim), mean over tokens) is set by :class:`TextEmbeddingUNet` for one forward.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, context_dim: int):
        super().__init__(num_embeddings, embedding_dim)
        self.text_proj = torch.nn.Linear(context_dim, embedding_dim)
        torch.nn.init.zeros_(self.text_proj.weight)
        torch.nn.init.zeros_(self.text_proj.bias)
        self.context: torch.Tensor | None = None

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        out = super().forward(labels)
        if self.context is not None:
            out = out + self.text_proj(self.context.mean(1).to(out.dtype))
        return out


class TextEmbeddingUNet(DiffusionModelUNet):
    """``DiffusionModelUNet`` whose caption embedding also joins the class embedding (added to the time
    embedding of every residual block), beside the cross-attention. MONAI's forward is unchanged."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        old = self.class_embedding
        self.class_embedding = TextAndClassEmbedding(old.num_embeddings, old.embedding_dim,
                                                     kwargs["cross_attention_dim"])
        self.class_embedding.weight.data.copy_(old.weight.data)

    def forward(self, x, timesteps, context=None, class_labels=None, *args, **kwargs):
        self.class_embedding.context = context
        try:
            return super().forward(x, timesteps, context, class_labels, *args, **kwargs)
        finally:
            self.class_embedding.context = None


def build_unet(cfg: UNetConfig, latent_channels: int) -> DiffusionModelUNet:
    """3-D ``DiffusionModelUNet`` on ``latent_channels`` channels, class- (and optionally text-) conditioned."""
    cls = DiffusionModelUNet
    if cfg.text_in_time_embedding:
        if not (cfg.with_conditioning and cfg.num_class_embeds and cfg.cross_attention_dim):
            raise ConfigError("unet.text_in_time_embedding needs with_conditioning, cross_attention_dim and num_class_embeds")
        cls = TextEmbeddingUNet
    return cls(
        spatial_dims=3, in_channels=latent_channels, out_channels=latent_channels,
        channels=tuple(cfg.channels), attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks, num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups, num_class_embeds=cfg.num_class_embeds,
        with_conditioning=cfg.with_conditioning, cross_attention_dim=cfg.cross_attention_dim,
        include_fc=False,
    )

def _schedule_args(cfg: SchedulerConfig) -> dict:
    return dict(num_train_timesteps=cfg.num_train_timesteps, schedule=cfg.schedule, beta_start=cfg.beta_start,
                beta_end=cfg.beta_end, prediction_type=cfg.prediction_type, clip_sample=False)

def build_train_scheduler(cfg: SchedulerConfig) -> DDPMScheduler:
    """The DDPM scheduler the prior is trained with."""
    return DDPMScheduler(**_schedule_args(cfg))

def build_ddim_scheduler(cfg: SchedulerConfig, steps: int) -> DDIMScheduler:
    """A DDIM scheduler with the training betas, set to ``steps`` inference steps."""
    sched = DDIMScheduler(**_schedule_args(cfg), set_alpha_to_one=True)
    sched.set_timesteps(steps)
    return sched

def check_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError when the grid does not fit the VAE and UNet down-sampling."""
    f = cfg.vae_factor
    g = 2 ** (len(cfg.unet.channels) - 1)
    if any(n % f for n in cfg.grid):
        raise ConfigError(f"model grid {tuple(cfg.grid)} is not divisible by the VAE factor {f}")
    if any((n // f) % g for n in cfg.grid):
        raise ConfigError(f"latent grid {cfg.latent_shape[1:]} is not divisible by the UNet factor {g}")
    nrb = cfg.vae.num_res_blocks
    if not isinstance(nrb, int) and len(nrb) != len(cfg.vae.channels):
        raise ConfigError(f"vae.num_res_blocks {tuple(nrb)} needs one entry per channels entry {tuple(cfg.vae.channels)}")
    if cfg.vae.shortcut and cfg.vae.shortcut_map == "average" and f**3 % cfg.vae.latent_channels:
        raise ConfigError(f"vae.shortcut needs latent_channels dividing {f}^3 = {f**3}, got {cfg.vae.latent_channels}")
    if cfg.vae.shortcut and cfg.vae.latent_channels > f**3:
        raise ConfigError(f"vae.shortcut needs latent_channels <= {f}^3 = {f**3}, got {cfg.vae.latent_channels}")
    if len(cfg.vae.attention_levels) != len(cfg.vae.channels) or len(cfg.unet.attention_levels) != len(cfg.unet.channels):
        raise ConfigError("attention_levels must have one entry per channels entry (vae and unet)")

def build_models(cfg: ModelConfig) -> tuple[AutoencoderKL, DiffusionModelUNet]:
    """The VAE and the latent UNet of ``cfg``, freshly initialised."""
    check_model_config(cfg)
    return build_vae(cfg.vae), build_unet(cfg.unet, cfg.vae.latent_channels)
