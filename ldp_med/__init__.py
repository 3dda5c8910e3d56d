"""ldp-med: MRI reconstruction with a latent diffusion prior, built on MONAI."""

__version__ = "0.1.0"

from ldp_med.config import DEFAULT_GUIDANCE  # noqa: E402
from ldp_med.errors import LdpError, InputError  # noqa: E402

__all__ = ["__version__", "LdpError", "InputError", "load_pretrained", "generate"]


def load_pretrained(path=None, device="cpu", with_unet=True):
    """Load a model folder (default: the shipped model); see :func:`ldp_med.models.pretrained.load_pretrained`."""
    from ldp_med.models.pretrained import load_pretrained as _load

    return _load(path, device=device, with_unet=with_unet)


def generate(n=1, contrast=None, prompt=None, guidance=DEFAULT_GUIDANCE, steps=50, seed=0, device="cpu", model=None):
    """Generate volumes; see :func:`ldp_med.sampling.generate.generate` (returns images and affine)."""
    from ldp_med.sampling.generate import generate as _generate

    return _generate(n, contrast, prompt, guidance, steps, seed, device, model)
