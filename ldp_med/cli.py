"""The ``ldp-med`` command line: each command parses, builds a config, and calls one library function.

Every :class:`~ldp_med.errors.LdpError` becomes one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import signal
import sys

import click

from ldp_med.config import DEFAULT_GUIDANCE, ReconstructConfig, SimulateConfig, load_config
from ldp_med.errors import InputError, LdpError
from ldp_med.tasks import ALL_METHODS, DEFAULT_METHOD, TASKS


@contextlib.contextmanager
def _quiet_library_logs():
    """Mute nibabel's header fix-up log lines: the readers reject what it would fix, in one line of their own."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            with _quiet_library_logs():
                return super().invoke(ctx)
        except LdpError as exc:
            click.echo(f"ldp-med: error: {exc}", err=True)
            ctx.exit(2)
        except MemoryError:
            click.echo("ldp-med: error: out of memory", err=True)
            ctx.exit(2)
        except OSError as exc:  # a full disk or read-only folder met outside the atomic writers (e.g. checkpoints)
            if exc.errno not in _DISK_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"ldp-med: error: {where}cannot write ({exc.strerror})", err=True)
            ctx.exit(2)


_DISK_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}
#: What ``simulate`` without ``-o`` calls its output: ``<name>_<tag>`` beside the clean input.
SIMULATED_TAG = {"kspace": "kspace", "denoise": "noisy", "superres": "thick"}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ldp-med")
def cli() -> None:
    """MRI reconstruction with a latent diffusion prior."""


def main() -> None:  # console-script entry point
    from ldp_med.startup import install, tune_allocator

    tune_allocator()  # before torch is imported: huge pages for large CPU tensors (ldp_med.startup)
    install()  # MONAI without the optional packages it would load for unused models (ldp_med.startup)
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit (ulimit -f) a write fails with EFBIG: one line, no core dump
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    cli(prog_name="ldp-med")


@cli.command()
@click.argument("clean")
@click.option("-o", "--out", default=None,
              help="Output: .h5 for kspace, a volume (.nii.gz, .nii, .mgz, .mgh, or a name without a suffix: a DICOM "
                   "series folder) otherwise.  [default: <name>_kspace.h5, <name>_noisy.nii.gz or "
                   "<name>_thick.nii.gz beside the input; .mgz / .mgh for FreeSurfer inputs]")
@click.option("--task", type=click.Choice(TASKS), default="kspace", show_default=True)
@click.option("--accel", type=float, default=4.0, show_default=True, help="Requested acceleration R.")
@click.option("--mask", "mask_kind", type=click.Choice(["poisson", "random-lines", "equispaced-lines"]), default="poisson", show_default=True)
@click.option("--calib", type=int, default=12, show_default=True, help="Calibration square side (Poisson) or centre lines.")
@click.option("--coils", type=int, default=8, show_default=True)
@click.option("--noise", type=float, default=None, help="Noise sigma relative to the clean 99.9th percentile [kspace 0.005, denoise 0.05, superres 0].")
@click.option("--noise-kind", type=click.Choice(["gaussian", "rician"]), default="rician", show_default=True, help="denoise only.")
@click.option("--factor", type=int, default=2, show_default=True, help="superres: slice-thickness factor.")
@click.option("--axis", type=int, default=2, show_default=True, help="superres: slice axis (0, 1, 2).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--volume-index", type=int, default=None, help="Volume to use from 4-D input.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def simulate(clean, out, task, accel, mask_kind, calib, coils, noise, noise_kind, factor, axis, seed, volume_index, force):
    """Degrade a clean volume: multi-coil k-space (.h5), noise, or thick slices."""
    from ldp_med.io.atomic import check_output
    from ldp_med.io.loaders import check_volume_output, is_kspace_file, load_volume, save_output
    from ldp_med.physics.simulate import DEFAULT_NOISE, simulate as simulate_data

    if noise is None:
        noise = DEFAULT_NOISE[task]
    if out is None:
        from ldp_med.pipeline import default_output

        out = str(default_output(clean, SIMULATED_TAG[task], ".h5" if task == "kspace" else None))
    if task != "kspace":
        check_volume_output(out, force, inputs=[clean])
    elif not is_kspace_file(out):
        raise InputError(out, "k-space output must end in .h5 or .hdf5")
    else:
        check_output(out, force, inputs=[clean])
    _check_args(out, accel=accel, calib=calib, coils=coils, noise=noise, factor=factor, axis=axis)
    cfg = SimulateConfig(task=task, accel=accel, mask=mask_kind, calib=calib, coils=coils, noise=noise,
                         noise_kind=noise_kind, factor=factor, axis=axis, seed=seed)
    vol = load_volume(clean, volume_index)
    save_output(simulate_data(vol, cfg, source=clean), out, force=force)
    click.echo(f"wrote {out}")


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    return device


def _check_args(out, accel, calib, coils, noise, factor, axis) -> None:
    if accel < 1:
        raise InputError(None, f"--accel must be >= 1, got {accel}")
    if calib < 0 or coils < 1:
        raise InputError(None, "--calib must be >= 0 and --coils >= 1")
    if noise < 0:
        raise InputError(None, f"--noise must be >= 0, got {noise}")
    if factor < 2 or axis not in (0, 1, 2):
        raise InputError(None, f"--factor must be >= 2 and --axis 0, 1 or 2 (got {factor}, {axis})")


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", default=None,
              help="Output volume, .nii.gz, .nii, .mgz, .mgh or a name without a suffix (a DICOM series "
                   "folder) for one input; an existing folder for several.  [default: <name>_<method>.nii.gz "
                   "beside each input; .mgz / .mgh for FreeSurfer inputs]")
@click.option("--method", type=click.Choice(ALL_METHODS), default=None, help="Default: " + ", ".join(f"{m} ({t})" for t, m in DEFAULT_METHOD.items()) + "; prior = latent posterior sampling (the config's posterior.method, DDS by default), dps = latent DPS.")
@click.option("--task", type=click.Choice(["auto", *TASKS]), default=None,
              help="Default: auto (kspace for .h5; a volume with one axis 1.5x thicker than the others: superres; "
                   "other volumes: denoise; the choice is printed).")
@click.option("--factor", type=int, default=None, help="superres: slice-thickness factor [the slice axis' voxel size over the in-plane one; 2 for isotropic voxels].")
@click.option("--axis", type=int, default=None, help="superres: slice axis [the thickest axis; 2 for isotropic voxels].")
@click.option("--volume-index", type=int, default=None, help="Volume to use from 4-D input.")
@click.option("--config", "config_path", default=None, help="YAML with ReconstructConfig fields (options given here override it).")
@click.option("--set", "overrides", multiple=True, help="Override a config field, e.g. baseline.cs_lambda=0.004.")
@click.option("--samples", type=int, default=None, help="prior/dps: posterior samples (mean -> OUT, std -> <name>_std.nii.gz).")
@click.option("--steps", type=int, default=None, help="prior/dps: DDIM steps of the full schedule.")
@click.option("--seed", type=int, default=None, help="prior/dps: random seed.")
@click.option("--align/--no-align", default=None, help="prior/dps: place the model grid by registration (--align; the default for k-space up to R=4-6) or by centring the field of view (--no-align; the default for R=8, denoise and superres).")
@click.option("--model", "model_dir", default=None, help="prior/dps: model folder (default: the shipped model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--report", default=None, help="Write a PNG of orthogonal slices: input, reconstruction (, std).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def reconstruct(inputs, out, method, task, factor, axis, volume_index, config_path, overrides, samples, steps, seed,
                align, model_dir, device, report, force):
    """Reconstruct k-space (.h5), a noisy volume or a thick-slice volume."""
    from ldp_med.pipeline import reconstruct_to_files

    given = {"method": method, "task": task, "factor": factor, "axis": axis}
    post = {"samples": samples, "steps": steps, "seed": seed, "align": align}
    cfg = load_config(ReconstructConfig, config_path, overrides)
    try:  # options the user gave override the config; replace() re-validates
        posterior = dataclasses.replace(cfg.posterior, **{k: v for k, v in post.items() if v is not None})
        cfg = dataclasses.replace(cfg, posterior=posterior, **{k: v for k, v in given.items() if v is not None})
    except LdpError as exc:
        raise InputError(None, str(exc)) from None
    for path in reconstruct_to_files(list(inputs), out, cfg, volume_index, report, force,
                                     model=model_dir, device=_device(device)):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("recon")
@click.option("--reference", required=True,
              help="Reference volume (NIfTI, MGH, MINC, DICOM) or a k-space container (its `reference`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--report", default=None, help="Write a PNG of orthogonal slices: reference, reconstruction, "
                                             "error x10.")
@click.option("--force", is_flag=True, help="Overwrite an existing report.")
def evaluate(recon, reference, as_json, report, force):
    """PSNR, SSIM (3-D) and NMSE of a reconstruction against a reference."""
    from ldp_med.pipeline import evaluate_files

    scores = evaluate_files(recon, reference, report, force)
    if as_json:
        click.echo(json.dumps(scores))
    else:
        click.echo(f"PSNR {scores['psnr']:.2f} dB  SSIM {scores['ssim']:.4f}  NMSE {scores['nmse']:.5f}")


@cli.command()
@click.option("-o", "--out", "out_dir", default="demo_out", show_default=True, help="Output folder (created).")
@click.option("--accel", type=float, default=4.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing outputs in the folder.")
def demo(out_dir, accel, seed, force):
    """Simulate an accelerated 8-coil scan of the MNI152 template and reconstruct it."""
    from ldp_med.demo import run_demo

    rows = run_demo(out_dir, accel=accel, seed=seed, force=force)
    for name, s in rows.items():
        click.echo(f"{name:12s} PSNR {s['psnr']:6.2f} dB  SSIM {s['ssim']:.4f}  time {s['seconds']:6.1f} s")
    click.echo(f"results in {out_dir}/ (report.png, *.nii.gz, scan.h5)")


@cli.group()
def train() -> None:
    """Train the VAE, then the latent diffusion prior (both run under torchrun/DDP unchanged)."""


def _train_common(f):
    f = click.option("--config", "config_path", default=None, help="YAML training recipe (configs/).")(f)
    f = click.option("--data", "data_dir", default=None, help="Folder / CSV / JSON list of healthy scans.")(f)
    f = click.option("--synthetic", type=int, default=None, help="Train on N synthetic training subjects.")(f)
    f = click.option("--out", "out_dir", required=True, help="Output folder (checkpoints, logs, model/).")(f)
    f = click.option("--resume", is_flag=True, help="Continue from <out>/checkpoint.")(f)
    f = click.option("--set", "overrides", multiple=True, help="Override a config field, e.g. loop.steps=100.")(f)
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)(f)
    f = click.option("--max-minutes", type=float, default=None, help="Checkpoint and stop after this long; continue with --resume.")(f)
    f = click.option("--init", "init_dir", default=None, help="Start from this model folder's weights (fine-tune).")(f)
    return f


def _train_config(cls, config_path, overrides, data_dir, synthetic):
    cfg = load_config(cls, config_path, overrides)
    if data_dir and synthetic:
        raise InputError(None, "give --data or --synthetic, not both")
    if data_dir:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, folder=data_dir))
    if synthetic:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synthetic=synthetic, folder=""))
    return cfg


def _setup(cfg, device):
    import torch

    from ldp_med.training.distributed import init_distributed

    if cfg.loop.threads > 0:
        torch.set_num_threads(cfg.loop.threads)
    return init_distributed(device)


def _seconds(minutes):
    return None if minutes is None else 60.0 * minutes


def _report_training(info, folder, out_dir):
    if info.is_main:
        click.echo(f"wrote {folder}" if folder else f"stopped early; continue with --resume --out {out_dir}")


@train.command("vae")
@_train_common
def train_vae_cmd(config_path, data_dir, synthetic, out_dir, resume, overrides, device, max_minutes, init_dir):
    """Train the 3-D VAE on random patches (L1 + MSE + KL)."""
    from ldp_med.config import VAETrainConfig
    from ldp_med.training.distributed import shutdown
    from ldp_med.training.vae import train_vae

    cfg = _train_config(VAETrainConfig, config_path, overrides, data_dir, synthetic)
    info = _setup(cfg, device)
    try:
        folder = train_vae(cfg, out_dir, info, resume=resume, max_seconds=_seconds(max_minutes), init=init_dir)
    finally:
        shutdown(info)
    _report_training(info, folder, out_dir)


@train.command("prior")
@_train_common
@click.option("--vae", "vae_dir", required=True, help="Model folder holding the trained VAE.")
def train_prior_cmd(config_path, data_dir, synthetic, out_dir, resume, overrides, device, max_minutes, init_dir, vae_dir):
    """Train the latent diffusion UNet on cached latents of the training images."""
    from ldp_med.config import PriorTrainConfig
    from ldp_med.training.distributed import shutdown
    from ldp_med.training.prior import train_prior

    cfg = _train_config(PriorTrainConfig, config_path, overrides, data_dir, synthetic)
    info = _setup(cfg, device)
    try:
        folder = train_prior(cfg, vae_dir, out_dir, info, resume=resume, max_seconds=_seconds(max_minutes), init=init_dir)
    finally:
        shutdown(info)
    _report_training(info, folder, out_dir)


@cli.command()
@click.option("--model", "model_dir", default=None, help="Model folder (default: the shipped model).")
@click.option("--json", "as_json", is_flag=True)
def info(model_dir, as_json):
    """Model grid, voxel size, latent shape, classes, parameter counts, training data."""
    from ldp_med.models.pretrained import describe

    desc = describe(model_dir)
    if as_json:
        click.echo(json.dumps(desc, indent=2))
    else:
        for k, v in desc.items():
            click.echo(f"{k:22s} {v}")


@cli.command()
@click.argument("input_path", metavar="INPUT")
@click.option("-o", "--out", default=None,
              help="Output volume (.nii.gz, .nii, .mgz, .mgh, or a name without a suffix: a DICOM series folder) "
                   "[default: <name>_ae.nii.gz beside the input; .mgz / .mgh for FreeSurfer inputs].")
@click.option("--model", "model_dir", default=None, help="Model folder (default: the shipped model).")
@click.option("--volume-index", type=int, default=None, help="Volume to use from 4-D input.")
@click.option("--align", is_flag=True, help="Place the model grid by registration to the model space, not by centring.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def autoencode(input_path, out, model_dir, volume_index, align, force):
    """Encode and decode a volume through the VAE (model grid in, input grid out)."""
    from ldp_med.io.loaders import check_volume_output, load_volume, save_volume
    from ldp_med.models.autoencode import autoencode_volume
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.pipeline import default_output

    if out is None:
        out = str(default_output(input_path, "ae"))
    check_volume_output(out, force, inputs=[input_path])
    prior = load_pretrained(model_dir, with_unet=False)
    vol = load_volume(input_path, volume_index)
    save_volume(autoencode_volume(prior, vol, align=align), out, force=force)
    click.echo(f"wrote {out}")


@cli.command()
@click.option("-o", "--out", "out_dir", required=True, help="Output folder (created if its parent exists).")
@click.option("--contrast", default=None, help="Contrast class, e.g. T1w, T2w, PD, FLAIR.")
@click.option("--prompt", default=None, help="Free-text prompt (needs a text-conditioned model and ldp-med[text]).")
@click.option("-n", "count", type=int, default=1, show_default=True, help="Number of volumes.")
@click.option("--guidance", type=float, default=DEFAULT_GUIDANCE, show_default=True, help="Classifier-free guidance weight.")
@click.option("--steps", type=int, default=50, show_default=True, help="DDIM steps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--model", "model_dir", default=None, help="Model folder (default: the shipped model).")
@click.option("--preview", default=None, help="Write a contact sheet PNG of central slices.")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def generate(out_dir, contrast, prompt, count, guidance, steps, seed, device, model_dir, preview, force):
    """Generate volumes from the prior (class-conditional, or unconditional without --contrast)."""
    from pathlib import Path

    from ldp_med.io.atomic import check_output
    from ldp_med.io.nifti import save_nifti
    from ldp_med.io.volume import Volume
    from ldp_med.models.conditioning import null_class
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.sampling.generate import check_request, request_conditions
    from ldp_med.sampling.generate import generate as run_generate

    check_request(count, contrast, prompt)
    out = Path(out_dir)
    if not out.parent.is_dir():
        raise InputError(out, f"parent folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    names = [out / f"sample_{i:03d}.nii.gz" for i in range(count)]
    for p in names + ([Path(preview)] if preview else []):
        check_output(p, force)
    prior = load_pretrained(model_dir, device=_device(device))
    conditions = request_conditions(prior, count, contrast, prompt)
    if prompt:  # which class went with the prompt (the folder's caption classifier; none: the prompt alone)
        read = int(conditions[0][0])
        contrast = prior.config.class_names[read] if read < null_class(prior) else None
        click.echo(f"prompt read as {contrast or 'no contrast (the prompt steers alone)'}")
    imgs, affine = run_generate(count, None, None, guidance, steps, seed, prior=prior, conditions=conditions)
    for p, img in zip(names, imgs.numpy()):
        save_nifti(Volume(img, affine, {"contrast": contrast or "unconditional"}), p, force=force)
    if preview:
        from ldp_med.report import save_slices_png

        save_slices_png(preview, {p.name: img for p, img in zip(names, imgs.numpy())}, force=force,
                        scales={p.name: (0.0, 1.0) for p in names}, title=f"{contrast or 'unconditional'}, guidance {guidance:g}",
                        affine=affine)
    click.echo(f"wrote {count} volume(s) to {out}/")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
