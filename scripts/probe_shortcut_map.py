"""What the VAE's fixed shortcut map keeps by itself: PSNR of map-then-inverse, no network (issue 14).

    cd scripts && OMP_NUM_THREADS=2 python probe_shortcut_map.py --out ../docs/probe_shortcut_map.md

Maps (ldp_med.models.shortcut, factor 4): ``average`` (groups of 64/C sub-voxels averaged, repeated back) and
``pca`` (the C principal components of the 4x4x4 blocks of training subjects 0-11, noise-free, as
``VAEConfig.shortcut_map: pca`` fits them on the training cohort). Scored in model units against the noise-free image
(validation subjects 10000-10002, as the cohort renders them and rendered sharp) and against the MNI 2009a template
on the model grid. A linear map on non-overlapping blocks: a floor for what a decoder around it can draw, not a ceiling.
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
    args = ap.parse_args()
    require_validation(args.seeds)
    train = torch.cat([noise_free(s) for s in synthetic.seeds("train", args.train)])
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


if __name__ == "__main__":
    main()
