"""File-level jobs behind the CLI: reconstruct inputs to files, evaluate a file against a reference."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ldp_med.config import ReconstructConfig
from ldp_med.errors import InputError, LdpError
from ldp_med.io.atomic import check_output
from ldp_med.io.kspace import load_kspace
from ldp_med.io.loaders import (check_volume_output, check_volume_path, is_kspace_file, load_volume, save_volume,
                                volume_stem)
from ldp_med.io.mgh import is_mgh_path
from ldp_med.io.volume import Volume, reorient
from ldp_med.metrics import evaluate
from ldp_med.reconstruct import Reconstruction, reconstruct_file
from ldp_med.tasks import PRIOR_METHODS


def _folder_suffix(path: str) -> str:
    """What an input's output is called in a folder of outputs: FreeSurfer's format stays, all else is NIfTI."""
    name = Path(path).name.lower()
    return name[-4:] if is_mgh_path(name) else ".nii.gz"


def default_output(path: str, tag: str, suffix: str | None = None) -> Path:
    """``<name>_<tag>.nii.gz`` beside the input ``path`` (``.mgz`` / ``.mgh`` for FreeSurfer inputs; ``suffix`` when
    given; a DICOM folder's name is its ``<name>``, and "." names the folder it is): where an output goes when ``-o``
    is not given. A missing input is refused here, in one line: there is nothing to name an output beside."""
    if not os.path.exists(path):
        raise InputError(path, "no such file or folder")
    source = Path(path) if Path(path).name else Path(os.path.abspath(path))
    return source.with_name(f"{volume_stem(source)}_{tag}{suffix or _folder_suffix(path)}")


def _outputs(inputs: list[str], out: str | None, report: str | None, methods: list[str]) -> list[Path]:
    """One output path per input: ``out`` itself for one input (NIfTI or MGH), ``out/<name><suffix>`` for several;
    without ``out``, ``<name>_<method><suffix>`` beside each input. An MGH input keeps its ``.mgz`` / ``.mgh``,
    every other input (NIfTI, MINC, DICOM, k-space) gives ``.nii.gz``."""
    if len(inputs) > 1 and report:
        raise InputError(report, "--report needs a single input")
    if out is None:
        paths = [default_output(p, m) for p, m in zip(inputs, methods)]
    elif len(inputs) == 1:
        check_volume_path(out)
        return [Path(out)]
    elif not os.path.isdir(out):
        raise InputError(out, "with several inputs, -o must be an existing folder")
    else:
        paths = [Path(out) / f"{volume_stem(p)}{_folder_suffix(p)}" for p in inputs]
    if len(set(paths)) != len(paths):
        raise InputError(out or paths[0].parent, "two inputs share a name; outputs would collide")
    return paths


def _settle(path: str, cfg: ReconstructConfig) -> tuple[ReconstructConfig, str | None]:
    """``cfg`` with the task and method of ``path`` settled (``auto`` and the task's default made explicit), and for a
    volume given without a task a line saying which task it got and why (printed once its output is written, so that
    a refusal stays one line)."""
    from ldp_med.reconstruct import resolve_method, resolve_task, volume_task

    if not os.path.exists(path):
        raise InputError(path, "no such file or folder")
    note = None
    if cfg.task == "auto" and not is_kspace_file(path):
        task, why = volume_task(path)
        note = f"{path}: {task} ({why})"
    else:
        task = resolve_task(path, cfg.task)
    method = resolve_method(path, task, cfg.method)  # its refusal names the input itself
    try:
        return dataclasses.replace(cfg, task=task, method=method), note
    except LdpError as exc:  # e.g. closing.classical not a method of the task the input settles
        raise InputError(path, str(exc)) from None


def _shard() -> tuple[int, int]:
    """(rank, world size) under torchrun, else (0, 1): inputs are split round-robin across ranks."""
    return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))


def std_path(dest: Path) -> Path:
    """``out.nii.gz`` -> ``out_std.nii.gz``, ``out.mgz`` -> ``out_std.mgz`` (the posterior std beside the mean)."""
    name = volume_stem(dest)
    return dest.with_name(f"{name}_std{dest.name[len(name):]}")


def reconstruct_to_files(inputs: list[str], out: str | None, cfg: ReconstructConfig, volume_index: int | None = None,
                         report: str | None = None, force: bool = False, model: str | None = None,
                         device: str = "cpu") -> list[Path]:
    """Reconstruct each input with ``cfg`` and write ``<out>`` (one input) or ``<out>/<name>.nii.gz`` (several; an
    MGH input's output keeps its ``.mgz`` / ``.mgh``); ``out`` None: ``<name>_<method>.nii.gz`` beside each input.

    With a prior method and ``cfg.posterior.samples > 1`` the std map goes to ``<name>_std.nii.gz``.
    Each input's task and method are settled first (a volume without a task: :func:`ldp_med.reconstruct.volume_task`,
    the choice printed on stderr once done), then all destinations are checked before any work starts, so a refused
    overwrite costs nothing.
    """
    rank, world = _shard()
    settled, notes = zip(*(_settle(p, cfg) for p in inputs))
    dests = _outputs(inputs, out, report, [c.method for c in settled])
    jobs = list(zip(inputs, dests, settled))[rank::world]  # this rank's share under torchrun
    _check_outputs(inputs, jobs, report, force)
    prior = None
    if any(c.method in PRIOR_METHODS for _, _, c in jobs):
        from ldp_med.models.pretrained import load_pretrained

        prior = load_pretrained(model, device=device)
    for path, _, job_cfg in jobs:
        check_reconstruction_memory(path, job_cfg, prior)
    written = []
    for (path, dest, job_cfg), note in tqdm(list(zip(jobs, notes[rank::world])), disable=len(jobs) < 2,
                                            desc=f"files (rank {rank})" if world > 1 else "files"):
        rec = reconstruct_file(path, job_cfg, volume_index, progress=len(inputs) == 1, prior=prior)
        save_volume(rec.volume, dest, force=force)
        if note:  # the task read from the voxel sizes, said once it is done (a refusal before stays one line)
            tqdm.write(note, file=sys.stderr)
        written.append(dest)
        if rec.std is not None:
            save_volume(rec.std, std_path(dest), force=force)
            written.append(std_path(dest))
        if report:
            _write_report(path, rec, report, force)
            written.append(Path(report))
    return written


def _check_outputs(inputs: list[str], jobs: list[tuple[str, Path, ReconstructConfig]], report: str | None,
                   force: bool) -> None:
    """Every destination is new (or ``force``), writable, distinct, never an input, and claimed by this process."""
    dests = [dest for _, dest, _ in jobs]
    dests += [std_path(dest) for _, dest, c in jobs if c.method in PRIOR_METHODS and c.posterior.samples > 1]
    if report:
        dests.append(Path(report))
    seen: dict[str, Path] = {}
    for dest in dests:
        real = os.path.realpath(dest)
        if real in seen:
            raise InputError(dest, f"the same file as output {seen[real]}; give distinct outputs")
        seen[real] = dest
        if report and dest == Path(report):
            check_output(dest, force, inputs=inputs)
        else:
            check_volume_output(dest, force, inputs)


def check_reconstruction_memory(path: str, cfg: ReconstructConfig, prior=None) -> None:
    """Refuse (one line) a reconstruction of ``path`` with ``cfg`` (its task and method settled, :func:`_settle`)
    estimated not to fit in the available memory.

    The sizes come from the file's header (:func:`ldp_med.resources.input_shape`); the formula is
    :func:`ldp_med.resources.reconstruction_bytes`. Inputs whose size is unknown before reading pass.
    """
    from ldp_med.resources import check_memory, input_shape, reconstruction_advice, reconstruction_bytes

    task, method = cfg.task, cfg.method
    found = input_shape(path, task, cfg.factor, cfg.axis)
    if found is None:
        return
    shape, coils = found
    grid, channels, samples = None, 0, 1
    if prior is not None and method in PRIOR_METHODS:
        grid, channels, samples = prior.config.grid, prior.config.vae.channels[0], cfg.posterior.samples
    need = reconstruction_bytes(task, method, shape, coils, grid, channels, samples)
    what = f"{method} reconstruction of {coils} coil(s) x {'x'.join(map(str, shape))}" if task == "kspace" else \
        f"{method} {task} of {'x'.join(map(str, shape))}"
    check_memory(need, what, reconstruction_advice(task, method), path)


#: How the report names each task's pseudo-inverse (the image the data alone gives).
_PINV_NAMES = {"kspace": "zero-filled", "denoise": "input", "superres": "cubic"}


def _write_report(path: str, rec: Reconstruction, report: str, force: bool) -> None:
    from ldp_med.report import save_slices_png

    vols = {_PINV_NAMES[rec.problem.task]: rec.problem.pinv.data, "reconstruction": rec.volume.data}
    if rec.std is not None:
        vols["posterior std"] = rec.std.data
    save_slices_png(report, vols, force=force, title=Path(path).name, affine=rec.volume.affine)


#: How far (mm, any entry of the affines) a reconstruction's grid may lie from its reference's and still be the same
#: grid: float32 header fields (NIfTI's sform, MGH's cosines) hold an affine to about 1e-5 mm.
SAME_GRID_MM = 1e-3


def load_reference(path: str) -> Volume:
    """A reference magnitude volume and its grid: a volume (NIfTI, MGH, MINC, DICOM) or a k-space container's
    ``reference``."""
    if is_kspace_file(path):
        ksp = load_kspace(path)
        if ksp.reference is None:
            raise InputError(path, "k-space container has no `reference` dataset")
        return Volume(ksp.reference, ksp.affine)
    return load_volume(path)


def on_grid_of(volume: Volume, reference: Volume, path: str) -> np.ndarray:
    """``volume``'s data voxel for voxel with ``reference``'s: as it is on the same grid, with its axes permuted and
    flipped when it holds the same grid in another storage order (an LIA MGZ against a RAS NIfTI); no resampling.

    Raises:
        InputError: naming ``path`` when the shapes or the grids differ.
    """
    data, affine = reorient(volume.data, volume.affine, like=reference.affine)
    if data.shape != reference.shape:
        stored = "" if data.shape == volume.shape else f", {data.shape} in the reference's axis order,"
        raise InputError(path, f"shape {volume.shape}{stored} does not match the reference's {reference.shape}")
    gap = float(np.abs(affine - reference.affine).max())
    if gap > SAME_GRID_MM:
        raise InputError(path, f"its grid is not the reference's (affines differ by up to {gap:.3g} mm); "
                               "resample one onto the other before comparing")
    return np.ascontiguousarray(data)


def evaluate_files(recon: str, reference: str, report: str | None = None, force: bool = False) -> dict[str, float]:
    """PSNR/SSIM/NMSE of the volume in ``recon`` against ``reference`` (conventions: ldp_med.metrics), voxel for
    voxel on the reference's grid (:func:`on_grid_of`); with ``report``, a PNG of the reference, the reconstruction
    and the error magnified :data:`ERROR_GAIN` times, on the reference's grid (checked, like every output, before the
    work: never an input, never over a file without ``force``)."""
    if report:
        check_output(report, force, inputs=[recon, reference])
    ref = load_reference(reference)
    data = on_grid_of(load_volume(recon), ref, recon)
    scores = evaluate(data, ref.data)
    if report:
        from ldp_med.report import save_slices_png

        top = float(np.percentile(ref.data, 99.5)) or 1.0
        error = np.abs(data - ref.data)
        save_slices_png(report, {"reference": ref.data, "reconstruction": data, f"|error| x{ERROR_GAIN}": error},
                        force=force, scales={"reference": (0, top), "reconstruction": (0, top),
                                             f"|error| x{ERROR_GAIN}": (0, top / ERROR_GAIN)},
                        title=f"{Path(recon).name}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}",
                        affine=ref.affine)
    return scores


#: How many times the error is magnified in ``evaluate``'s report (its row spans a tenth of the reference's range).
ERROR_GAIN = 10
