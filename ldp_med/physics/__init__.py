"""MRI physics: centred FFTs, forward operators, masks, coil maps, noise and degradations."""

from ldp_med.errors import MissingDependencyError
from ldp_med.physics.coils import birdcage_maps, espirit_maps
from ldp_med.physics.degradations import (
    SliceAverageOperator,
    coarse_affine,
    fine_affine,
    fine_shape,
    slice_average,
)
from ldp_med.physics.fft import fftnc, ifftnc
from ldp_med.physics.masks import (
    MASK_KINDS,
    equispaced_lines_mask,
    make_mask,
    poisson_mask,
    random_lines_mask,
    realised_acceleration,
)
from ldp_med.physics.mri import MRIOperator, coil_combine, zero_filled
from ldp_med.physics.noise import (
    add_gaussian_noise,
    add_rician_noise,
    complex_gaussian_noise,
    estimate_image_noise,
    estimate_rician_noise,
    estimate_kspace_noise,
    smooth_random_phase,
)
from ldp_med.physics.operators import DenoiseOperator, LinearOperator

__all__ = [
    "DenoiseOperator",
    "LinearOperator",
    "MASK_KINDS",
    "MRIOperator",
    "MissingDependencyError",
    "SliceAverageOperator",
    "add_gaussian_noise",
    "add_rician_noise",
    "birdcage_maps",
    "coarse_affine",
    "coil_combine",
    "complex_gaussian_noise",
    "equispaced_lines_mask",
    "espirit_maps",
    "estimate_image_noise",
    "estimate_rician_noise",
    "estimate_kspace_noise",
    "fftnc",
    "fine_affine",
    "fine_shape",
    "ifftnc",
    "make_mask",
    "poisson_mask",
    "random_lines_mask",
    "realised_acceleration",
    "slice_average",
    "smooth_random_phase",
    "zero_filled",
]
