"""Reconstruct one input file: pick the task, run the method, return a magnitude volume on the acquisition grid."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ldp_med import baselines
from ldp_med.config import ReconstructConfig
from ldp_med.errors import InputError
from ldp_med.io.kspace import KSpaceData, load_kspace
from ldp_med.io.loaders import is_kspace_file, load_volume
from ldp_med.io.volume import Volume
from ldp_med.physics.degradations import fine_affine

PRIOR_METHODS = ("prior", "dps")
METHODS = {
    "kspace": ("zero-filled", "cs", "tv", *PRIOR_METHODS),
    "denoise": ("nlm", *PRIOR_METHODS),
    "superres": ("cubic", *PRIOR_METHODS),
}
DEFAULT_METHOD = {"kspace": "cs", "denoise": "nlm", "superres": "cubic"}


def resolve_task(path: str | os.PathLike, task: str) -> str:
    """``auto`` means kspace for an ``.h5`` container; NIfTI/DICOM inputs need an explicit task."""
    is_h5 = is_kspace_file(path)
    if task == "auto":
        if not is_h5:
            raise InputError(path, "not a k-space container; pass --task denoise or --task superres")
        return "kspace"
    if task == "kspace" and not is_h5:
        raise InputError(path, "--task kspace needs a k-space container (.h5)")
    if task != "kspace" and is_h5:
        raise InputError(path, f"--task {task} needs a NIfTI file or DICOM folder, not a k-space container")
    return task


def resolve_method(path: str | os.PathLike, task: str, method: str | None) -> str:
    """The method to run for ``task`` (its default when ``method`` is None); unknown pairs are errors."""
    method = method or DEFAULT_METHOD[task]
    if method not in METHODS[task]:
        raise InputError(path, f"method {method!r} does not apply to task {task} (choose from {', '.join(METHODS[task])})")
    return method


def coil_maps(ksp: KSpaceData, calib: int) -> np.ndarray | None:
    """The file's sensitivity maps; ESPIRiT estimates from the calibration region when it has none."""
    if ksp.sensitivity_maps is not None or ksp.kspace.shape[0] == 1:
        return ksp.sensitivity_maps
    from ldp_med.physics.coils import espirit_maps

    return espirit_maps(ksp.kspace, calib=calib)


def reconstruct_kspace(ksp: KSpaceData, method: str, cfg: ReconstructConfig, progress: bool = False) -> np.ndarray:
    """Magnitude image (X, Y, Z) float32 in the container's ``reference`` units."""
    b = cfg.baseline
    maps = coil_maps(ksp, b.espirit_calib)
    if method == "zero-filled":
        img = baselines.zero_filled(ksp.kspace, ksp.mask, maps)
    elif method == "cs":
        img = baselines.cs_l1_wavelet(ksp.kspace, ksp.mask, maps, b.cs_lambda, b.cs_iters, b.cs_wavelet, progress)
    elif method == "tv":
        img = baselines.cs_total_variation(ksp.kspace, ksp.mask, maps, b.tv_lambda, b.tv_iters, progress)
    else:  # pragma: no cover - resolve_method guards this
        raise ValueError(method)
    return np.abs(img).astype(np.float32)


def reconstruct_with_prior(path, task: str, method: str, cfg: ReconstructConfig, prior, volume_index=None,
                           progress: bool = False) -> tuple[Volume, Volume | None]:
    """Posterior sampling with the latent prior (``prior`` = DDS, ``dps``); returns (mean, std or None)."""
    from ldp_med.sampling import posterior, tasks

    if task == "kspace":
        problem = tasks.kspace_problem(load_kspace(path), espirit_calib=cfg.baseline.espirit_calib,
                                       coil_energy=cfg.posterior.coil_energy)
    else:
        vol = load_volume(path, volume_index)
        if task == "denoise":
            problem = tasks.denoise_problem(vol)
        else:
            _check_superres(path, cfg)
            problem = tasks.superres_problem(vol, cfg.factor, cfg.axis)
    result = posterior.reconstruct(prior, problem, cfg.posterior, method="dds" if method == "prior" else method,
                                   progress=progress)
    meta = {"source": str(path), "method": method, "nfe": result.nfe}
    mean = result.volume()
    mean.meta.update(meta)
    return mean, result.std_volume()


def _check_superres(path, cfg: ReconstructConfig) -> None:
    if not 0 <= cfg.axis <= 2:
        raise InputError(path, f"--axis must be 0, 1 or 2, got {cfg.axis}")
    if cfg.factor < 2:
        raise InputError(path, f"--factor must be an integer >= 2, got {cfg.factor}")


def reconstruct_file(path: str | os.PathLike, cfg: ReconstructConfig, method: str | None = None,
                     volume_index: int | None = None, progress: bool = False, prior=None) -> Volume:
    """Read ``path``, reconstruct it with ``method`` and return the magnitude volume with its affine.

    kspace: output on the k-space grid with the container's affine, in ``reference`` units.
    denoise: same grid and units as the input. superres: the fine grid (``cfg.factor`` x thinner
    slices along ``cfg.axis``) with the fine grid's affine.
    """
    return reconstruct_file_with_std(path, cfg, method, volume_index, progress, prior)[0]


def reconstruct_file_with_std(path: str | os.PathLike, cfg: ReconstructConfig, method: str | None = None,
                              volume_index: int | None = None, progress: bool = False,
                              prior=None) -> tuple[Volume, Volume | None]:
    """Like :func:`reconstruct_file`, also returning the posterior std map (prior methods, samples > 1)."""
    task = resolve_task(path, cfg.task)
    method = resolve_method(path, task, method)
    if method in PRIOR_METHODS:
        if prior is None:
            from ldp_med.models.pretrained import load_pretrained

            prior = load_pretrained()
        return reconstruct_with_prior(path, task, method, cfg, prior, volume_index, progress)
    return _reconstruct_classical(path, task, method, cfg, volume_index, progress), None


def _reconstruct_classical(path, task: str, method: str, cfg: ReconstructConfig, volume_index, progress) -> Volume:
    if task == "kspace":
        ksp = load_kspace(path)
        data = reconstruct_kspace(ksp, method, cfg, progress)
        return Volume(data=data, affine=ksp.affine, meta={"source": str(path), "method": method})
    vol = load_volume(path, volume_index)
    meta = {"source": str(path), "method": method}
    if task == "denoise":
        b = cfg.baseline
        data = baselines.denoise_nlm(vol.data, b.nlm_patch_size, b.nlm_patch_distance, b.nlm_h_factor)
        return Volume(data=data, affine=vol.affine, meta={**vol.meta, **meta})
    _check_superres(path, cfg)
    data = baselines.cubic_upsample(vol.data, cfg.factor, cfg.axis)
    return Volume(data=data, affine=fine_affine(vol.affine, cfg.factor, cfg.axis), meta=meta)


def output_name(path: str | os.PathLike) -> str:
    """``scan.nii.gz`` -> ``scan`` (used to name outputs beside a folder of inputs)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".h5", ".hdf5"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
