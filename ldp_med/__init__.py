"""ldp-med: MRI reconstruction with a latent diffusion prior, built on MONAI."""

__version__ = "0.1.0"

from ldp_med.errors import LdpError, InputError  # noqa: E402

__all__ = ["__version__", "LdpError", "InputError"]
