"""How many edge-replicated voxels the aligned model-space transform needs at a cut field of view.

    cd scripts && OMP_NUM_THREADS=2 python probe_edge.py --volumes crop:10000 crop:10001 crop:10002 crop:10003

For each *validation* volume (``benchlib.volume_of(name, "val")``; ``crop:<seed>`` is a synthetic head moved and
cut to half its field of view) the alignment is estimated once, then the aligned ``ToModelSpace`` runs with its
field of view widened by 0, 2, 4 and 8 edge-replicated voxels (``ldp_med.space._EDGE``; the shipped count is
``ldp_med.space.EDGE_VOXELS``): PSNR of the round trip alone (model space and back) and of the autoencode through
the shipped VAE, against the volume (docs/results.md, "A partial field of view's edge").
"""

from __future__ import annotations

import argparse

from benchlib import emit, volume_of

PADS = (0, 2, 4, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", nargs="+", default=["crop:10000", "crop:10001", "crop:10002", "crop:10003"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch
    from monai.transforms import BorderPad

    import ldp_med.space as space
    from ldp_med.align import estimate_alignment
    from ldp_med.metrics import psnr
    from ldp_med.models.pretrained import load_pretrained

    prior = load_pretrained(with_unet=False)
    shipped = space._EDGE
    lines = ["| validation volume | shape | " + " | ".join(f"{p} voxels: round trip / autoencode (dB)" for p in PADS) + " |",
             "|---|---|" + "---|" * len(PADS)]
    try:
        for name in args.volumes:
            vol = volume_of(name, "val")[0]
            matrix = estimate_alignment(vol).matrix
            cells = []
            for pad in PADS:
                space._EDGE = BorderPad(spatial_border=pad, mode="replicate")
                x, info = space.ToModelSpace.from_config(prior.config, transform=matrix)(vol)
                with torch.no_grad():
                    rec = prior.vae.decode(prior.vae.encode(x[None])[0])[0].clamp(0, None)
                cells.append(f"{psnr(info.to_acquisition(x), vol.data):.2f} / {psnr(info.to_acquisition(rec), vol.data):.2f}")
            lines.append(f"| {name} | {'x'.join(map(str, vol.shape))} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    finally:
        space._EDGE = shipped
    emit(lines, args.out)


if __name__ == "__main__":
    main()
