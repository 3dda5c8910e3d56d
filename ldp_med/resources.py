"""Memory guards: estimate what a reconstruction or a training run needs, and refuse it up front.

An out-of-memory kill gives no message and may take other jobs with it; a refusal before any
allocation says what was estimated and what to change. The estimates are deliberately simple
(a sum of array sizes times calibrated factors, see docs/reliability.md) and err on the high side.

Available memory is ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup's ``memory.max``
minus ``memory.current`` (containers), or ``LDP_MED_MEMORY_LIMIT_GB`` when set (shared machines,
tests). Where none can be read (not Linux) the guards pass.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ldp_med.config import DataConfig
from ldp_med.errors import InputError

#: Environment variable: the memory (GB) ldp-med may assume is available, overriding /proc/meminfo.
LIMIT_ENV = "LDP_MED_MEMORY_LIMIT_GB"
GB = 1e9

#: Bytes beyond the arrays that any reconstruction touches (FFT plans, lazily imported libraries).
RECON_OVERHEAD = 100e6
#: Complex64 C x C per-voxel matrices of ESPIRiT (sigpy's image-domain AHA and its products), per coil pair.
ESPIRIT_COIL_PAIRS = 2.5
#: Live complex64 multi-coil arrays (coils x X x Y x Z x 8 bytes) at the peak of each k-space method,
#: ESPIRiT coil-map estimation included (it runs once for every method when the file has no maps). zero-filled, cs
#: and tv from 1 mm heads, where the arrays outweigh ESPIRiT's (session 48, peak RSS less the 0.6 GB program, 8
#: coils): 182x218x182 3.11 / 4.61 / 5.29 GB, 256^3 6.74 / 9.29 / 11.65 GB (docs/reliability.md; tested,
#: ``MEASURED_KSPACE_PEAKS``); their 2, 6 and 4 until session 48, 5, 7.5 and 9.5 until session 54 (ESPIRiT's grid
#: then 5-8x larger, whose term covered part of the arrays).
KSPACE_COIL_ARRAYS = {"zero-filled": 6.0, "cs": 8.5, "tv": 10.5, "prior": 4.0, "dps": 6.0}
#: Live float32 images (X x Y x Z x 4 bytes) at the peak of each image-domain method, and (``IMAGE_FIXED``) bytes that
#: grow with the volume only up to a cap: the training rows of the networks learned on the scan (noise2self's
#: ``_MAX_TRAIN``, selfsim's ``_MAX_ROWS``), which the prior methods run as their classical partner. Peak RSS less
#: the 0.38 GB program, 2 mm / 1 mm NLin6Asym head (session 53, docs/reliability.md): denoise prior 0.82 / 1.95 GB,
#: noise2self 0.61 / 1.66, nlm 0.04 / 0.36, bm4d 0.84 / more than 7.06 (stopped at 400 s); superres selfsim
#: 0.37 / 1.51, prior 0.48 / 1.54, cubic 0.02 / 0.27. Until then noise2self, selfsim and bm4d counted 8 images
#: (0.33 GB at 1 mm) and the prior 16 without its partner.
IMAGE_ARRAYS = {"nlm": 12.0, "cubic": 8.0, "noise2self": 40.0, "selfsim": 44.0, "bm4d": 280.0, "prior": 20.0,
                "dps": 20.0}
IMAGE_FIXED = {"noise2self": 0.5e9, "selfsim": 0.2e9, "prior": 0.3e9, "dps": 0.3e9}
#: Live float32 activations per model-grid voxel and first-level channel of the prior's networks
#: (VAE decoder and encoder at the model grid dominate; UNet activations are at the latent grid).
PRIOR_ACTIVATIONS = 15.0
#: What each posterior sample after the first adds: complex64 images on the acquisition grid (k-space; the image tasks
#: add their ``IMAGE_ARRAYS`` float32 images) and float32 activations per model-grid voxel and first-level channel.
#: The samples share the coil arrays and run the networks and the acquisition-grid steps one at a time. Measured
#: (session 47, peak RSS, 8 coils, R=4): 1 mm NLin6 head 4.23 GB with 1 sample, 7.45 with 8 (0.46 GB a sample);
#: the 2 mm template 1.32 / 2.36 GB (0.15): 51 bytes an acquisition voxel, 11 a model voxel and channel.
SAMPLE_IMAGES = 8.0
SAMPLE_ACTIVATIONS = 4.0
#: Bytes per float32 parameter in training: weight, gradient and AdamW's two moments.
TRAIN_PARAM_BYTES = 16
#: Stored activations (forward + their gradients) per patch voxel and first-level channel in training.
TRAIN_ACTIVATIONS = 60.0


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process may still allocate, or None when unknown (then guards pass).

    Raises:
        InputError: ``LDP_MED_MEMORY_LIMIT_GB`` is not a positive number.
    """
    given = os.environ.get(LIMIT_ENV, "").strip()
    if given:
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if not value > 0 or not math.isfinite(value):
            raise InputError(None, f"{LIMIT_ENV}={given!r}: expected a positive number of GB")
        return int(value * GB)
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(found) if found else None


def _gb(nbytes: float) -> str:
    """``251`` or ``0.15``: whole GB from 10 GB up, two significant digits below."""
    return f"{nbytes / GB:.0f}" if nbytes >= 10 * GB else f"{nbytes / GB:.2g}"


def check_memory(need_bytes: float, what: str, advice: str, path: str | os.PathLike | None = None) -> None:
    """Refuse work estimated to need more than the available memory.

    Args:
        need_bytes: the estimate.
        what: the work, e.g. ``"cs reconstruction of 8 coils x 256x256x180"``.
        advice: what to change, e.g. ``"use fewer coils: --set posterior.coil_energy=0.95"``.
        path: the file the work is about (named first in the message).

    Raises:
        InputError: one line, ``<path>: <what> needs about N GB, M GB is available; <advice>``.
    """
    avail = available_memory()
    if avail is None or need_bytes <= avail:
        return
    raise InputError(path, f"{what} needs about {_gb(need_bytes)} GB of memory, {_gb(max(avail, 0))} GB "
                           f"is available ({LIMIT_ENV} or free memory); {advice}")


# -- reconstruction -----------------------------------------------------------------------------------
def reconstruction_bytes(task: str, method: str, shape: tuple[int, ...], coils: int = 1,
                         model_grid: tuple[int, ...] | None = None, first_channels: int = 0,
                         samples: int = 1) -> float:
    """Estimated peak bytes of one reconstruction above the loaded program.

    With ``N = X*Y*Z`` (the output grid) and ``C`` coils:

    - k-space: ``RECON_OVERHEAD + 8 * (N_e * ESPIRIT_COIL_PAIRS * C**2 + N * KSPACE_COIL_ARRAYS[method] * C)``
      (ESPIRiT holds a C x C matrix per voxel of its grid, N_e voxels, coarser than N above
      ``ESPIRIT_MAX_VOXELS``; the methods hold a few multi-coil arrays);
    - denoise / superres: ``RECON_OVERHEAD + IMAGE_FIXED[method] + IMAGE_ARRAYS[method] * 4 * N``;
    - prior methods add, for the first posterior sample, the DC arrays again and
      ``PRIOR_ACTIVATIONS * 4 * prod(model_grid) * first_channels`` of network activations, and for every further
      sample ``SAMPLE_IMAGES * 8 * N`` (k-space) or ``IMAGE_ARRAYS[method] * 4 * N`` (the image tasks) and
      ``SAMPLE_ACTIVATIONS * 4 * prod(model_grid) * first_channels``.
    """
    voxels = math.prod(int(s) for s in shape[:3])
    if task == "kspace":
        from ldp_med.physics.coils import espirit_grid

        espirit_voxels = math.prod(espirit_grid(tuple(int(s) for s in shape[:3])))
        need = RECON_OVERHEAD + 8 * (espirit_voxels * ESPIRIT_COIL_PAIRS * coils ** 2
                                     + voxels * KSPACE_COIL_ARRAYS.get(method, 8.0) * coils)
        first, extra = KSPACE_COIL_ARRAYS.get(method, 8.0) * 8 * coils * voxels, SAMPLE_IMAGES * 8 * voxels
    else:
        need = RECON_OVERHEAD + IMAGE_FIXED.get(method, 0.0) + IMAGE_ARRAYS.get(method, 8.0) * 4 * voxels
        first = extra = IMAGE_ARRAYS.get(method, 8.0) * 4 * voxels
    if model_grid and first_channels:
        model = 4 * math.prod(model_grid) * first_channels
        need += first + PRIOR_ACTIVATIONS * model + (max(1, samples) - 1) * (extra + SAMPLE_ACTIVATIONS * model)
    return need


def reconstruction_advice(task: str, method: str) -> str:
    """What a user can change when a reconstruction would not fit."""
    if task == "kspace" and method in ("prior", "dps"):
        return ("compress the coils (--set posterior.coil_energy=0.95), use fewer samples, "
                "or crop the field of view")
    if task == "kspace":
        return "crop the field of view or combine coils before reconstructing, or use a machine with more memory"
    return "crop the volume, or use a machine with more memory"


def input_shape(path: str | os.PathLike, task: str, factor: int | None = 2,
                axis: int | None = 2) -> tuple[tuple[int, ...], int] | None:
    """(output grid, coils) from a file's header without reading its data, or None when unknown.

    K-space containers: the ``kspace`` dataset's shape (coils, X, Y, Z). Volumes:
    :func:`ldp_med.io.loaders.header_geometry` (NIfTI, MGH, DICOM series folders; superres: ``factor`` x along
    ``axis``, None read from the voxel sizes as the problem will). MINC and single DICOM files return None; their
    readers check sizes themselves.
    """
    from ldp_med.io.loaders import header_geometry, is_kspace_file

    if is_kspace_file(path):
        try:
            import h5py

            with h5py.File(path, "r") as f:
                shape = f["kspace"].shape
        except Exception:  # noqa: BLE001 - unreadable containers are the reader's to report, with its message
            return None
        return (tuple(shape[1:4]), int(shape[0])) if len(shape) == 4 else None
    found = header_geometry(path)
    if found is None:
        return None
    shape, zooms = list(found[0]), found[1]
    if task == "superres":
        from ldp_med.problems import slice_geometry

        factor, axis = slice_geometry(zooms, factor, axis)
        shape[axis] *= factor
    return tuple(shape), 1


# -- training ---------------------------------------------------------------------------------------------
def vae_training_bytes(n_images: int, grid: tuple[int, ...], params: int, batch: int, patch: int,
                       channels: tuple[int, ...], whole_volume: bool = False) -> float:
    """Estimated peak bytes of VAE training.

    ``2 * N * prod(grid)`` (float16 training images) ``+ 16 * params`` (weights, gradients, AdamW)
    ``+ TRAIN_ACTIVATIONS * 4 * batch * patch**3 * channels[0]`` (a whole volume instead of the
    patches when ``whole_volume``).
    """
    voxels = math.prod(grid) if whole_volume else batch * patch ** 3
    return 2 * n_images * math.prod(grid) + TRAIN_PARAM_BYTES * params + TRAIN_ACTIVATIONS * 4 * voxels * channels[0]


def prior_training_bytes(n_images: int, grid: tuple[int, ...], params: int, vae_first_channels: int,
                         latent_voxels: int, latent_channels: int, batch: int, unet_first_channels: int) -> float:
    """Estimated peak bytes of latent diffusion training.

    Images (float16) and their latents, the VAE's encoder activations on one whole volume
    (``PRIOR_ACTIVATIONS * 4 * prod(grid) * vae_first_channels``), weights + AdamW, and the UNet's
    stored activations ``TRAIN_ACTIVATIONS * 4 * batch * latent_voxels * unet_first_channels``.
    """
    images = 2 * n_images * math.prod(grid) + 4 * n_images * latent_voxels * latent_channels
    encode = PRIOR_ACTIVATIONS * 4 * math.prod(grid) * vae_first_channels
    return images + encode + TRAIN_PARAM_BYTES * params + TRAIN_ACTIVATIONS * 4 * batch * latent_voxels * unet_first_channels


def count_training_images(data: DataConfig) -> int:
    """How many training images a data config names (a folder's entries but its cache, or the synthetic count
    plus its ``sharp`` and ``heads`` renderings)."""
    folder = data.folder
    if not folder:
        return data.synthetic + data.sharp + data.heads
    if os.path.isdir(folder):
        cache = os.path.realpath(data.cache_dir) if data.cache_dir else ""
        return max(1, sum(1 for e in os.scandir(folder) if not e.name.startswith(".") and os.path.realpath(e.path) != cache))
    try:
        with open(folder) as fh:
            return max(1, sum(1 for line in fh if line.strip()))
    except OSError:
        return 1
