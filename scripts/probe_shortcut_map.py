"""What the VAE's fixed shortcut map keeps by itself: PSNR of map-then-inverse, no network (issue 14).

    cd scripts && OMP_NUM_THREADS=2 python probe_shortcut_map.py --out ../docs/probe_shortcut_map.md

Maps (ldp_med.models.shortcut, factor 4): ``average`` (groups of 64/C sub-voxels averaged, repeated back) and
``pca`` (the C principal components of the 4x4x4 blocks of training subjects 0-11, noise-free, as
``VAEConfig.shortcut_map: pca`` fits them on the training cohort). Scored in model units against the noise-free image
(validation subjects 10000-10002, as the cohort renders them and rendered sharp) and against the MNI 2009a template
on the model grid. A linear map on non-overlapping blocks: a floor for what a decoder around it can draw, not a ceiling.

``--real``: instead, the PCA map alone on the anatomy never trained on (``bench_vae.real_volumes``: real scans, the
template, heads), centred and aligned, through ``ToModelSpace`` and back, plain PSNR against the volume as
``bench_vae --real-only`` scores the VAE (issue 17's autoencode rows):

    cd scripts && OMP_NUM_THREADS=2 python probe_shortcut_map.py --real --channels 32 40 48 56
"""

from __future__ import annotations

import argparse

import torch
from benchlib import emit, psnr_model_units as psnr, require_validation, subject_in_model_units

from ldp_med.data import synthetic
from ldp_med.data.cohort import model_units
from ldp_med.models.shortcut import block_pca, channel_to_space, expand, project, space_to_channel

F = 4


def noise_free(seed: int, sharp: bool = False) -> torch.Tensor:
    return subject_in_model_units(seed, sharp)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10000, 10001, 10002])
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--train", type=int, default=12, help="training subjects the PCA is fitted on")
    ap.add_argument("--out", default=None)
    ap.add_argument("--real", action="store_true", help="the real scans, template and heads instead (bench_vae's rows)")
    args = ap.parse_args()
    require_validation(args.seeds)
    train = torch.cat([noise_free(s) for s in synthetic.seeds("train", args.train)])
    if args.real:
        emit(real_rows(train, args.channels), args.out)
        return
    bases = {c: block_pca(train, F, c) for c in args.channels}
    volumes = [(f"val {s}", noise_free(s)) for s in args.seeds]
    volumes += [(f"val {s} sharp", noise_free(s, sharp=True)) for s in args.seeds]
    template, _ = synthetic.template_volume()
    volumes.append(("MNI 2009a template", torch.from_numpy(model_units(template))[None, None]))
    head = " | ".join([f"average {c}" for c in args.channels if 64 % c == 0] + [f"pca {c}" for c in args.channels])
    lines = [f"| volume | {head} |", "|---|" + "---|" * len(head.split(" | "))]
    for name, x in volumes:
        row = [psnr(channel_to_space(space_to_channel(x, F, c), F), x) for c in args.channels if 64 % c == 0]
        row += [psnr(expand(project(x, F, *bases[c]), F, *bases[c]), x) for c in args.channels]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    emit(lines, args.out)


def real_rows(train: torch.Tensor, channels: list[int]) -> list[str]:
    """The PCA map at each channel count on ``bench_vae.real_volumes``, centred and aligned (whole-volume PSNR)."""
    from bench_vae import real_volumes

    from ldp_med.align import estimate_alignment
    from ldp_med.metrics import psnr as plain_psnr
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.space import ToModelSpace

    bases = {c: block_pca(train, F, c) for c in channels}
    cfg = load_pretrained(with_unet=False).config  # the shipped model's grid and model-space affine
    lines = ["| volume | placement | round trip, no map (dB) | " + " | ".join(f"pca {c}" for c in channels) + " |",
             "|---|---|---|" + "---|" * len(channels)]
    for name, vol in real_volumes().items():
        for align in (False, True):
            x, info = ToModelSpace.from_config(cfg, transform=estimate_alignment(vol).matrix if align else None)(vol)
            row = [plain_psnr(info.to_acquisition(x), vol.data)]
            row += [plain_psnr(info.to_acquisition(expand(project(x[None], F, *bases[c]), F, *bases[c])[0].clamp(0, None)),
                               vol.data) for c in channels]
            lines.append(f"| {name} | {'aligned' if align else 'centred'} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return lines


if __name__ == "__main__":
    main()
