"""Shared parts of the benchmark scripts (they import ldp_med and this module, never each other).

- the validation-only guard of tuning, and the Markdown table with its command;
- the reconstruction cases of bench_recon / tune_prior: the acquisitions (``CASES``), the simulated input
  of a (volume, case), the matching ReconstructConfig, and the std-map score inside the head;
- the unseen paraphrase prompts of bench_generate / probe_captions.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ldp_med.io.volume import Volume


def require_validation(seeds) -> None:
    """Exit with a one-line message unless every seed is a synthetic *validation* subject (tuning never sees test)."""
    from ldp_med.data import synthetic

    for seed in seeds:
        if synthetic.split_of(seed) != "val":
            raise SystemExit(f"seed {seed} is not a validation subject")


def psnr_model_units(a, b) -> float:
    """PSNR (dB) of two tensors in model units (data range 1), as probe_vae, probe_prior and probe_latent score."""
    import torch

    return float(-10 * torch.log10(((a - b) ** 2).mean()))


def peak_rss_gb() -> float:
    """This process's own peak RSS in GB (``VmHWM``). Not ``ru_maxrss``: Python starts children with vfork, and
    Linux carries the parent's peak into the child's ``ru_maxrss`` at exec (a worker of a 9 GB parent reads 9 GB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_cli_measured(args: list[str]) -> float:
    """Run ``ldp-med ARGS`` in a fresh process (raises on failure); its own peak RSS in GB."""
    import subprocess

    code = ("import atexit, sys; from benchlib import peak_rss_gb; "
            "atexit.register(lambda: print(f'PEAK_RSS_GB {peak_rss_gb()}', file=sys.stderr)); "
            "from ldp_med.cli import main; sys.argv = ['ldp-med', *sys.argv[1:]]; main()")
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent)
    return float([line for line in out.stderr.splitlines() if line.startswith("PEAK_RSS_GB ")][-1].split()[1])


def emit(table: str | list[str], out: str | None) -> None:
    """Print ``table`` (text or lines); with ``out``, write it followed by the exact command that made it."""
    text = table if isinstance(table, str) else "\n".join(table)
    print(text)
    if out:
        threads = os.environ.get("OMP_NUM_THREADS")
        cmd = ("OMP_NUM_THREADS=" + threads + " " if threads else "") + "python " + shlex.join(sys.argv)
        Path(out).write_text(f"{text}\n\nProduced by: `{cmd}`\n")


# --- reconstruction cases (bench_recon, tune_prior) ---------------------------------------------------

#: Acquisitions, as SimulateConfig fields: 8 birdcage coils, complex noise 0.005, Poisson mask, 12x12
#: calibration at R = 4 / 8; Rician 5% noise; x2 slice thickness along axis 2.
CASES = {
    "kspace-r4": dict(task="kspace", accel=4.0, coils=8, noise=0.005, mask="poisson", calib=12),
    "kspace-r8": dict(task="kspace", accel=8.0, coils=8, noise=0.005, mask="poisson", calib=12),
    "denoise": dict(task="denoise", noise=0.05, noise_kind="rician"),
    "superres": dict(task="superres", factor=2, axis=2, noise=0.0),
}


#: Heads with skull, scalp and face that PyPI packages ship as data (averages of many subjects, never trained
#: on): name -> (wheel, file inside it, voxel size to resample to (None: as shipped), description). Read from the wheel (``packaged_file``), not installed:
#: nimare pins an older nilearn, and pydeface pulls nipype.
HEADS = {
    "head-nlin6": ("nimare==0.22.1", "nimare/resources/templates/tpl-MNI152NLin6Asym_res-02_T1w.nii.gz", None,
                   "MNI152NLin6Asym T1w head with skull, 2 mm (nimare; templateflow)"),
    "head-nlin6-1mm": ("nimare==0.22.1", "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_T1w.nii.gz", None,
                       "MNI152NLin6Asym T1w head with skull, 1 mm, 182x218x182 (nimare; templateflow)"),
    "head-pydeface": ("pydeface==2.1.0", "pydeface/data/mean_reg2mean.nii.gz", 2.0,
                      "pydeface mean head with face, resampled to 2 mm, scanner position"),
}

#: Heads that PyPI packages ship that are averages of many subjects and are *not* test data: validation volumes for
#: tuning (``--templates``; ``volume_of(name, split="val")`` only), the real anatomy (face, neck, dim skin) that the
#: synthetic heads lack. Same fields as :data:`HEADS`. (FSL's and SPM's MNI152 heads would be averages of the same 152
#: subjects as the NLin6Asym test head: left out.)
VAL_HEADS = {
    "val-conte": ("voxface==2024.7.23", "voxface/templates/ConteCore2_50_T1w_2mm.nii.gz", None,
                  "Caltech Conte Core 2 T1w average of 50 adults, head with face and neck, 2 mm (voxface, MIT)"),
}

#: Real scans of individuals that installed packages ship (:func:`real_scans`), by short name: test data only.
REAL = {"real-nibabel": "nibabel anatomical.nii (T1 part)", "real-dipy": "dipy aniso_vox (b0, 4x4x5 LPS)"}


def packaged_file(requirement: str, member: str, cache: Path = Path(__file__).resolve().parents[1] / "cache" / "wheels") -> Path:
    """A data file inside a PyPI wheel: ``pip download`` the wheel once into ``cache``, extract ``member``."""
    import subprocess
    import zipfile

    out = cache / member
    if not out.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        name = requirement.split("==")[0]
        wheels = sorted(cache.glob(f"{name}-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(cache), requirement],
                           check=True)
            wheels = sorted(cache.glob(f"{name}-*.whl"))
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extract(member, cache)
    return out


def rigid(deg: float, axis, shift, centre) -> np.ndarray:
    """World move: rotation by ``deg`` about ``axis`` through ``centre``, then ``shift`` (mm)."""
    from scipy.spatial.transform import Rotation

    axis = np.asarray(axis, float)
    r = Rotation.from_rotvec(np.deg2rad(deg) * axis / np.linalg.norm(axis)).as_matrix()
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = centre - r @ centre + np.asarray(shift, float)
    return t


def _random_move(vol: Volume, rng: np.random.Generator) -> np.ndarray:
    """A rigid move of ``vol``'s world drawn from ``rng``: 10 degrees about a random axis through the field of view's
    centre, then up to 20 mm (``crop:`` and ``coarse:`` copies)."""
    centre = vol.affine[:3, :3] @ ((np.array(vol.shape) - 1) / 2) + vol.affine[:3, 3]
    return rigid(10.0, rng.normal(size=3), rng.uniform(0, 20) * rng.normal(size=3) / np.sqrt(3), centre)


def moved_copy(vol: Volume, move: np.ndarray, vox=None, flip=(), crop=None) -> Volume:
    """``vol`` with its world moved by ``move``; optionally on ``vox`` mm voxels with ``flip``ped axes, then cropped.

    ``crop = (axis, side)`` keeps the first (``"lo"``) or second (``"hi"``) half of the voxels along ``axis``.
    """
    from scipy import ndimage
    from ldp_med.io.volume import Volume

    a0 = vol.affine
    if vox is None:
        data, a1 = vol.data, move @ a0
    else:
        vox0 = np.linalg.norm(a0[:3, :3], axis=0)
        vox = np.asarray(vox, float)
        shape = np.floor((np.array(vol.shape) - 1) * vox0 / vox).astype(int) + 1
        a = a0.copy()
        a[:3, :3] = a0[:3, :3] / vox0 * vox
        for ax in flip:
            a[:3, 3] += a[:3, ax] * (shape[ax] - 1)
            a[:3, ax] *= -1
        a1 = move @ a
        pull = np.linalg.solve(a0, np.linalg.solve(move, a1))  # copy voxel -> original voxel
        src = pull[:3, :3] @ np.indices(shape).reshape(3, -1) + pull[:3, 3:]
        data = ndimage.map_coordinates(vol.data, src, order=1).reshape(shape).astype(np.float32)
    out = Volume(np.ascontiguousarray(data), a1, dict(vol.meta))
    if crop is None:
        return out
    ax, side = crop
    lo, hi = np.zeros(3, int), np.array(out.shape)
    if side == "lo":
        hi[ax] = out.shape[ax] // 2
    else:
        lo[ax] = out.shape[ax] // 2
    return cut(out, lo, hi)


def cut(vol: Volume, lo, hi) -> Volume:
    """The voxels ``lo`` to ``hi`` (exclusive) of ``vol``, at the same world positions (the affine's origin moved)."""
    from ldp_med.io.volume import Volume

    lo = np.asarray(lo, int)
    affine = vol.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo
    data = vol.data[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return Volume(np.ascontiguousarray(data), affine, dict(vol.meta))


def volume_of(name: str, split: str = "test"):
    """``template``, a head of :data:`HEADS` (test) or :data:`VAL_HEADS` (``split`` "val"), a real scan of :data:`REAL`
    (the scan itself is the reference), a seed of ``split``, ``head:<seed>`` (that subject in a synthetic skull and
    scalp), ``crop:<seed>`` (that head moved and cut to half its field of view, as bench_align's ``crop-half``),
    ``coarse:<seed>`` (that head moved and acquired at 4x4x5 mm, LPS, as dipy's b0), ``part:<seed>`` (that head moved
    and cut to a 33x41x25-voxel box around a random point of its brain, as nibabel's T1 part), ``neck:<seed>`` (that
    head with a neck below it, past the model grid: :func:`with_neck`), ``noisy:<seed>`` / ``loud:<seed>`` (that head
    with Rician noise of its own, 1% / 3% of its maximum, as a real scan's reference has: a good 3 T scan's, a low-SNR
    EPI's), ``faint:<seed>`` (that head with a faint smooth signal in its air, 1-4% of its maximum, as a template
    averaged over many heads has) or ``rim:<seed>`` (that head with a dim rim outside its scalp: 10-25% of its maximum
    fading to 0 over 3-10 mm on about 60% of its surface, as a real head's face, ears and skin, or a template's blurred
    edge, have): (noise-free Volume, the reference; description)."""
    from ldp_med.data import synthetic
    from ldp_med.data.template import mni152_template
    from ldp_med.io.volume import Volume

    if name == "template":
        return mni152_template(2), "MNI152 2 mm template"
    if name in HEADS or name in REAL or name in VAL_HEADS:
        import nibabel as nib
        from nibabel.processing import resample_to_output

        if (name in VAL_HEADS) != (split == "val"):
            raise SystemExit(f"{name} is not a {split} volume")
        if name in REAL:
            description, voxel_mm = REAL[name], None
            img = nib.load(real_scans()[description])
        else:
            requirement, member, voxel_mm, description = {**HEADS, **VAL_HEADS}[name]
            img = nib.load(packaged_file(requirement, member))
        if voxel_mm:
            img = resample_to_output(img, voxel_sizes=voxel_mm, order=3)
        data = np.clip(np.asarray(img.get_fdata(), np.float32), 0, None)
        return Volume(data / np.percentile(data, 99.5), np.asarray(img.affine, np.float64), {}), description
    if name.startswith("crop:"):  # the synthetic head of a seed, moved (10 degrees, up to 20 mm), half of it in view
        head, description = volume_of(f"head:{name[5:]}", split)
        rng = np.random.default_rng(int(name[5:]))
        move = _random_move(head, rng)
        crop = (int(rng.integers(3)), ("lo", "hi")[int(rng.integers(2))])
        return moved_copy(head, move, crop=crop), f"{description}, moved, half the field of view (axis {crop[0]})"
    if name.startswith("part:"):  # a 66x82x50 mm box of the seed's synthetic head, moved (as nibabel's T1 part)
        head, description = volume_of(f"head:{name[5:]}", split)
        rng = np.random.default_rng([int(name[5:]), 7])
        moved = moved_copy(head, _random_move(head, rng))
        box = np.array([33, 41, 25])  # nibabel's anatomical.nii at 2 mm
        inside = np.argwhere(moved.data > 0.3 * moved.data.max())
        lo = np.clip(inside[rng.integers(len(inside))] - box // 2, 0, np.array(moved.shape) - box)
        return cut(moved, lo, lo + box), f"{description}, moved, a 66x82x50 mm box of it"
    if name.startswith("coarse:"):  # the synthetic head of a seed as a coarse EPI-like scan (dipy's b0 is 4x4x5 mm LPS)
        from scipy import ndimage

        head, description = volume_of(f"head:{name[7:]}", split)
        move = _random_move(head, np.random.default_rng([int(name[7:]), 5]))
        vox = np.array([4.0, 4.0, 5.0])  # the scanner's point spread: a Gaussian of the coarse voxel's FWHM
        blurred = ndimage.gaussian_filter(head.data, np.sqrt(vox**2 - 2.0**2) / 2.355 / 2.0)
        return (moved_copy(Volume(blurred, head.affine, {}), move, vox=vox, flip=(0, 1)),
                f"{description}, moved, at 4x4x5 mm (LPS)")
    if name.startswith("neck:"):  # the synthetic head of a seed on a field of view that reaches past the model grid
        head, description = volume_of(f"head:{name[5:]}", split)
        return with_neck(head, int(name[5:])), f"{description}, with a neck below it (56 mm past the grid)"
    if name.startswith(("noisy:", "loud:")):  # that head as a real scan's reference: with Rician noise of its own
        kind, seed = name.split(":")
        head, description = volume_of(f"head:{seed}", split)
        level = {"noisy": 0.01, "loud": 0.03}[kind]  # of the maximum: a good 3 T T1 scan's, a low-SNR (EPI) scan's
        rng, sigma = np.random.default_rng(int(seed)), level * float(head.data.max())
        noisy = np.hypot(head.data + sigma * rng.standard_normal(head.shape), sigma * rng.standard_normal(head.shape))
        return (Volume(noisy.astype(np.float32), head.affine, {}),
                f"{description}, with Rician noise of its own ({level:.0%})")
    if name.startswith("faint:"):  # that head with a faint smooth signal in its air, as an average of many heads has
        from scipy import ndimage

        head, description = volume_of(f"head:{name[6:]}", split)
        rng, peak = np.random.default_rng(int(name[6:])), float(head.data.max())
        field = ndimage.gaussian_filter(rng.standard_normal(head.shape), 8)
        field = (field - field.min()) / (field.max() - field.min())  # a slow wash in [0, 1]
        halo = ndimage.gaussian_filter((head.data > 0.1 * peak).astype(np.float32), 4)  # blurred skin
        faint = peak * (0.01 * (0.5 + field) + 0.03 * halo)
        return Volume((head.data + faint).astype(np.float32), head.affine, {}), f"{description}, faint signal in its air"
    if name.startswith("rim:"):  # that head with a dim rim outside its scalp, as a real head's face, ears and skin have
        from scipy import ndimage

        head, description = volume_of(f"head:{name[4:]}", split)
        rng, peak = np.random.default_rng([int(name[4:]), 29]), float(head.data.max())

        def field(sigma):  # a smooth standard random field
            f = ndimage.gaussian_filter(rng.standard_normal(head.shape), sigma)
            return (f - f.mean()) / f.std()

        outside = ndimage.distance_transform_edt(head.data < 0.1 * peak) * 2.0  # mm from the head's surface
        level = peak * np.clip(0.175 + 0.05 * field(6), 0.1, 0.25)  # 10-25% of the maximum
        depth = np.clip(6.5 + 2.0 * field(6), 3.0, 10.0)  # fading to 0 over 3-10 mm
        cover = field(10) > -0.25  # about 60% of the surface
        rim = np.where(cover & (outside > 0), level * np.clip(1 - outside / depth, 0, 1), 0)
        rim = ndimage.gaussian_filter(rim, 0.6)  # partial volume
        return (Volume(np.maximum(head.data, rim).astype(np.float32), head.affine, {}),
                f"{description}, a dim rim outside its scalp")
    if name.startswith("head:"):  # a synthetic subject wrapped in a synthetic skull and scalp (tuning heads)
        seed = int(name[5:])
        if synthetic.split_of(seed) != split:
            raise SystemExit(f"seed {seed} is not a {split} subject")
        subj = synthetic.make_subject(seed, return_clean=True, head=True)  # synthetic.synthetic_head
        return Volume(subj["clean"], subj["affine"], {}), f"subject {seed} ({subj['contrast']}) in a synthetic head"
    seed = int(name)
    if synthetic.split_of(seed) != split:
        raise SystemExit(f"seed {seed} is not a {split} subject")
    subj = synthetic.make_subject(seed, return_clean=True)
    return Volume(subj["clean"], subj["affine"], {}), f"test subject {seed} ({subj['contrast']})"


def with_neck(head: Volume, seed: int, slices: int = 28) -> Volume:
    """``head`` (a ``synthetic.synthetic_head`` volume, axis 2 inferior -> superior) on a field of view ``slices`` slices
    longer at the inferior end, filled with a neck: a textured soft-tissue cylinder under the head's lowest slices
    with a brighter skin and a vertebral body (dark cortex, brighter marrow) behind its centre; the world position
    of the head is kept. For *tuning*: anatomy past the model grid that the prior never saw, the way a brain prior
    meets a head scanned with its neck (the heads of :data:`HEADS` stay test data)."""
    from scipy import ndimage
    from ldp_med.io.volume import Volume

    rng = np.random.default_rng([seed, 23])
    data = head.data
    low = data[:, :, :6].max(axis=2) > 0.05  # the head's footprint on its lowest slices
    foot = np.argwhere(low) if low.any() else np.argwhere(np.ones(data.shape[:2], bool))
    (cx, cy), (rx, ry) = foot.mean(0), np.maximum(np.ptp(foot, axis=0) / 2 * 0.75, 4)
    x, y = np.meshgrid(np.arange(data.shape[0]), np.arange(data.shape[1]), indexing="ij")
    r = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
    spine = np.sqrt((x - cx) ** 2 + (y - (cy - 0.45 * ry)) ** 2)  # a vertebral body towards posterior (-y)
    level = float(np.percentile(data[data > 0.05], 60)) if (data > 0.05).any() else 0.5
    neck = np.zeros((*data.shape[:2], slices), np.float32)
    for k in range(slices):
        grow = 1.0 - 0.15 * k / slices  # the neck narrows away from the head
        tissue = (r < grow).astype(np.float32) * level * rng.uniform(0.5, 0.6)
        skin = ((r >= grow - 0.08) & (r < grow)).astype(np.float32) * level * 0.4
        tissue = np.where(spine < 0.22 * min(rx, ry), level * 0.15, tissue)  # cortical bone
        tissue = np.where(spine < 0.16 * min(rx, ry), level * 0.75, tissue)  # marrow
        neck[:, :, slices - 1 - k] = tissue + skin
    texture = ndimage.gaussian_filter(rng.standard_normal(neck.shape), 0.8)
    neck *= 1 + 0.1 * texture / texture.std()
    neck = np.clip(ndimage.gaussian_filter(neck, 0.7), 0, 1).astype(np.float32)
    affine = head.affine.copy()
    affine[:3, 3] -= affine[:3, 2] * slices
    return Volume(np.concatenate([neck, data], axis=2), affine, dict(head.meta))


def simulate(name: str, case: str, path: Path, split: str = "test") -> np.ndarray:
    """Write the simulated input of (volume, case) to ``path``; return the reference on the output grid."""
    from ldp_med.config import SimulateConfig
    from ldp_med.io import save_output
    from ldp_med.physics.simulate import simulate as simulate_data

    vol, _ = volume_of(name, split)
    cfg = SimulateConfig(seed=0, **CASES[case])
    save_output(simulate_data(vol, cfg), path)  # k-space -> .h5, a volume -> NIfTI
    ref = vol.data
    if cfg.task == "superres":  # the fine grid covers the first factor * (n // factor) slices
        n = ref.shape[cfg.axis] // cfg.factor * cfg.factor
        ref = np.take(ref, np.arange(n), axis=cfg.axis)
    return ref


#: The validation volume kinds of tune_prior / probe_air_gain: flag -> (the name prefix ``benchlib.volume_of`` reads,
#: the flag's help), in the order :func:`volume_names` lists them.
VOLUME_KINDS = {
    "heads": ("head:", "also each seed inside a synthetic skull and scalp (ldp_med.data.synthetic.synthetic_head, "
                       "'head:<seed>')"),
    "crops": ("crop:", "also each seed's synthetic head moved and cut to half its field of view ('crop:<seed>': a "
                       "volume where the prior sees only part of a head, like a partial real scan)"),
    "necks": ("neck:", "also each seed's synthetic head with a neck below it, past the model grid ('neck:<seed>', "
                       "benchlib.with_neck: anatomy the prior never saw, like a head scanned with its neck)"),
    "noisy": ("noisy:", "also each seed's synthetic head with Rician noise of its own, 1%% of its maximum "
                        "('noisy:<seed>': a reference whose air is not 0, like a real scan's)"),
    "faint": ("faint:", "also each seed's synthetic head with a faint smooth signal in its air ('faint:<seed>': "
                        "1-4%% of its maximum, as a template averaged over many heads has)"),
    "coarse": ("coarse:", "also each seed's synthetic head moved and acquired at 4x4x5 mm ('coarse:<seed>', as "
                          "dipy's b0)"),
    "parts": ("part:", "also each seed's synthetic head moved and cut to a 66x82x50 mm box ('part:<seed>', as "
                       "nibabel's T1 part)"),
    "rims": ("rim:", "also each seed's synthetic head with a dim rim outside its scalp ('rim:<seed>': 10-25%% of its "
                     "maximum, as a real head's face, ears and skin have; an air step must keep it)"),
    "loud": ("loud:", "also each seed's synthetic head with Rician noise of its own, 3%% of its maximum "
                      "('loud:<seed>': a low-SNR real scan's reference, an EPI b0's)"),
}


def add_volume_kinds(ap) -> None:
    """The flags of :data:`VOLUME_KINDS`, ``--templates`` and ``--no-brains`` (:func:`volume_names`) on an argparse
    parser."""
    for flag, (_, help_) in VOLUME_KINDS.items():
        ap.add_argument(f"--{flag}", action="store_true", help=help_)
    ap.add_argument("--templates", action="store_true",
                    help=f"also the validation head templates, once each ({', '.join(VAL_HEADS)}: averages of many "
                         "subjects with face and neck, benchlib.VAL_HEADS)")
    ap.add_argument("--no-brains", action="store_true",
                    help="leave out the seeds' plain brains (only the kinds asked for: e.g. --coarse --no-brains)")


def volume_names(args) -> list[str]:
    """Each of ``args.seeds`` as a plain brain (unless ``--no-brains``) and as each kind its flags ask for
    (:func:`add_volume_kinds`), kind by kind: ``10000``, ``10001``, ``head:10000`` ...; then :data:`VAL_HEADS` with
    ``--templates``"""
    kinds = [""] * (not args.no_brains) + [prefix for flag, (prefix, _) in VOLUME_KINDS.items() if getattr(args, flag)]
    return [f"{kind}{seed}" for kind in kinds for seed in args.seeds] + list(VAL_HEADS) * args.templates


def recon_config(case: str, method: str | None = None, posterior=None):
    """The ReconstructConfig that matches the simulation of ``case`` (task, slice factor and axis).

    Args:
        case: a key of :data:`CASES`.
        method: the method to run (None: the task's default).
        posterior: the PosteriorConfig to carry (default: PosteriorConfig's defaults).
    """
    from ldp_med.config import PosteriorConfig, ReconstructConfig, SimulateConfig

    sim = SimulateConfig(**CASES[case])
    return ReconstructConfig(method=method, task=sim.task, factor=sim.factor, axis=sim.axis,
                             posterior=PosteriorConfig() if posterior is None else posterior)


def head_mask(ref: np.ndarray) -> np.ndarray:
    """The head: reference voxels above 5% of its maximum (where the std map is scored)."""
    return ref > 0.05 * ref.max()


def spearman_in_head(std: np.ndarray, recon: np.ndarray, ref: np.ndarray) -> float:
    """Spearman correlation of the std map with the absolute error, inside :func:`head_mask`."""
    from scipy.stats import spearmanr

    head = head_mask(ref)
    return float(spearmanr(std[head], np.abs(recon - ref)[head]).statistic)


def spearman_ceiling(recon: np.ndarray, ref: np.ndarray, sigma: float = 1.0) -> float:
    """What a std map could reach at best: the Spearman correlation, inside :func:`head_mask`, of the absolute
    error with its own leave-one-out Gaussian average (sigma ``sigma`` voxels, the centre voxel left out), i.e. a
    map that knew every neighbour's true error. Where the error is mostly noise this stays low."""
    from scipy.ndimage import gaussian_filter
    from scipy.stats import spearmanr

    err = np.abs(np.asarray(recon, np.float64) - ref)
    impulse = np.zeros((9, 9, 9))
    impulse[4, 4, 4] = 1.0
    w0 = float(gaussian_filter(impulse, sigma)[4, 4, 4])  # the centre voxel's own weight
    neighbours = (gaussian_filter(err, sigma) - w0 * err) / (1 - w0)
    head = head_mask(ref)
    return float(spearmanr(neighbours[head], err[head]).statistic)


# --- prompts never used in training (bench_generate, probe_captions) ----------------------------------

#: Prompts never used in training (the cohort's captions come from synthetic.caption_pool). Set A was
#: written in session 2; the training vocabulary (synthetic.CONTRAST_SYNONYMS) was widened in session 3
#: after A's failures showed names the encoder could not place (e.g. "spin-lattice"), so set B was
#: written together with that vocabulary, before any model trained on it was evaluated.
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "T1w": ("T1 weighted MR image of a healthy adult brain", "spin-lattice weighted brain scan of a volunteer",
            "T1-weighted anatomical head scan", "MPRAGE-like T1 image of a normal brain"),
    "T2w": ("T2 weighted MR image of a healthy adult brain", "T2-weighted turbo spin echo of the head",
            "spin-spin relaxation weighted brain MRI", "T2 image of a normal adult brain"),
    "PD": ("proton density MR image of a healthy adult brain", "PD weighted scan of the head",
           "proton-density-weighted brain image of a volunteer", "brain MRI with proton density contrast"),
    "FLAIR": ("fluid-attenuated inversion recovery scan", "FLAIR MR image of a healthy adult brain",
              "T2 FLAIR image of a normal brain", "dark-fluid inversion recovery brain MRI"),
}
PARAPHRASES_B: dict[str, tuple[str, ...]] = {
    "T1w": ("healthy brain, T1-weighted sequence, 2 mm", "structural T1 MRI of an adult volunteer",
            "T1 contrast head MRI without pathology", "magnetization-prepared T1 scan of a healthy brain"),
    "T2w": ("healthy brain, T2-weighted sequence, 2 mm", "T2 contrast head MRI without pathology",
            "fast spin echo T2 image of an adult volunteer", "transverse-relaxation-weighted scan of a normal brain"),
    "PD": ("healthy brain, proton-density-weighted sequence, 2 mm", "PD contrast head MRI without pathology",
           "spin density image of an adult volunteer", "intermediate-weighted proton density brain scan"),
    "FLAIR": ("healthy brain, FLAIR sequence, 2 mm", "FLAIR contrast head MRI without pathology",
              "fluid-suppressed T2 image of an adult volunteer", "inversion recovery scan with dark CSF of a normal brain"),
}

#: Set C, written in session 18 before the prompt's contrast was read by the model folder's caption classifier
#: (ldp_med.models.conditioning.prompt_labels) and before anything was evaluated on it: a check of that
#: mechanism on prompts that neither its design nor any tuning saw.
PARAPHRASES_C: dict[str, tuple[str, ...]] = {
    "T1w": ("T1w volume of a normal subject's brain", "gradient-echo T1-weighted brain image of an adult",
            "3D T1 structural scan for a research study", "short-TR T1 weighted MRI of a healthy head"),
    "T2w": ("T2w volume of a normal subject's brain", "brain scan with bright cerebrospinal fluid, T2 weighting",
            "long-TE long-TR brain MRI of a healthy adult", "T2-weighted structural scan for a research study"),
    "PD": ("PDw volume of a normal subject's brain", "short-TE long-TR proton density head scan",
           "proton density weighted MRI for a research study", "PD image of a healthy adult head"),
    "FLAIR": ("FLAIR volume of a normal subject's brain", "T2-FLAIR with suppressed CSF signal of a healthy adult",
              "fluid attenuated MRI for a research study", "inversion-recovery T2 brain image with nulled fluid"),
}


def real_scans() -> dict[str, Path]:
    """Real scans that installed packages ship (no download)."""
    import dipy
    import nibabel

    return {"nibabel anatomical.nii (T1 part)": Path(nibabel.__file__).parent / "tests/data/anatomical.nii",
            "dipy aniso_vox (b0, 4x4x5 LPS)": Path(dipy.__file__).parent / "data/files/aniso_vox.nii.gz"}


def head_of(vol: Volume) -> np.ndarray:
    """Foreground of a real scan (the brain region the error is measured over): above 20% of its 99th percentile."""
    return vol.data > 0.2 * np.percentile(vol.data, 99)


def subject_in_model_units(seed: int, sharp: bool = False):
    """Validation/test subject ``seed`` as (subject dict, its noisy image x, the noise-free expectation of x), the
    images (1, 1, *grid) float32 in model units (``PercentileScaleIntensity``'s range of the noisy image, as
    ``ToModelSpace`` scales): what probe_vae and probe_prior score against. ``sharp``: rendered from the 1 mm
    template (``make_subject(sharp=True)``)."""
    import torch

    from ldp_med.data import synthetic
    from ldp_med.data.cohort import noise_free_units

    subj = synthetic.make_subject(seed, return_clean=True, sharp=sharp)
    image, _, expected = noise_free_units(subj["image"], subj["clean"], subj["noise_sigma"])
    return subj, torch.from_numpy(image)[None, None], torch.from_numpy(expected)[None, None]
