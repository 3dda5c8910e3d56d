"""Does the decoder's output still hold detail a network could recover? A trial on *validation* subjects (issue 14).

    OMP_NUM_THREADS=2 python scripts/probe_refiner.py --minutes 25 --width 32 --blocks 4

The shipped VAE is frozen; a residual refiner (MONAI ``ResidualUnit`` blocks, no normalisation, zero-initialised
output, on the pixel-unshuffle of the decoded image at half resolution) learns ``D(E(x)) -> noise-free x`` on 48^3
patches of the 120 training subjects' decoded images (noisy input -> its Rician mean, clean -> itself, as stage 6/8
train), AdamW 1e-3 with cosine decay over the given minutes. Prints the mean PSNR gain on validation subjects
10000-10003 (model units, against the noise-free input) every 5 minutes. The decoded training set is cached in
``runs/refiner_cache.pt`` (~1 GB, 4 min to build).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import psnr_model_units as psnr, subject_in_model_units
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.utils import pixelshuffle, pixelunshuffle

from ldp_med.data import synthetic
from ldp_med.data.cohort import noise_free_units
from ldp_med.models.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
VAL = [10000, 10001, 10002, 10003]


@torch.no_grad()
def decoded_pairs(cache: Path, cohort: Path) -> dict:
    """Decoded training images and their noise-free targets (float16), and the validation subjects' (float32)."""
    if cache.exists():
        return torch.load(cache)
    vae = load_pretrained(None, with_unet=False).vae.float().eval()
    entries = {e["seed"]: e for e in synthetic.load_index(cohort)}
    dec, tgt = [], []
    for s in synthetic.seeds("train", 120):
        image, clean, expected = noise_free_units(*synthetic.load_subject(cohort, entries[s], clean=True))
        for x, t in ((image, expected), (clean, clean)):
            dec.append(vae.decode(vae.encode(torch.from_numpy(x)[None, None])[0]).half())
            tgt.append(torch.from_numpy(t)[None, None].half())
    vd, vt = [], []
    for s in VAL:
        _, x, free = subject_in_model_units(s)
        vd.append(vae.decode(vae.encode(x)[0]))
        vt.append(free)
    out = {"dec": torch.cat(dec), "tgt": torch.cat(tgt), "vdec": torch.cat(vd), "vtgt": torch.cat(vt)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


class Refiner(torch.nn.Module):
    """``d + shuffle(net(unshuffle(d)))``: starts as the identity (zero-initialised last convolution)."""

    def __init__(self, width: int, blocks: int):
        super().__init__()
        self.inp = Convolution(3, 8, width, kernel_size=3, conv_only=True)
        self.body = torch.nn.Sequential(*[ResidualUnit(3, width, width, subunits=2, act="SWISH", norm=None)
                                          for _ in range(blocks)])
        self.out = Convolution(3, width, 8, kernel_size=3, conv_only=True)
        torch.nn.init.zeros_(self.out.conv.weight)
        torch.nn.init.zeros_(self.out.conv.bias)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return d + pixelshuffle(self.out(self.body(self.inp(pixelunshuffle(d, 3, 2)))), 3, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "refiner_cache.pt")
    ap.add_argument("--cohort", type=Path, default=ROOT / "cache" / "cohort")
    args = ap.parse_args()
    c = decoded_pairs(args.cache, args.cohort)
    dec, tgt, vdec, vtgt = c["dec"], c["tgt"], c["vdec"], c["vtgt"]
    base = np.mean([psnr(vdec[i:i + 1].clamp(0, 1), vtgt[i:i + 1]) for i in range(len(VAL))])
    print(f"decoded validation PSNR {base:.3f} dB", flush=True)
    net = Refiner(args.width, args.blocks)
    print("refiner parameters", sum(p.numel() for p in net.parameters()))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    n, _, *shape = dec.shape
    p = args.patch
    t0 = last = time.time()
    total, step = args.minutes * 60, 0
    while time.time() - t0 < total:
        frac = (time.time() - t0) / total
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1, step / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        xs, ts = [], []
        for i in torch.randint(n, (4,), generator=gen).tolist():
            a, b, k = (2 * int(torch.randint((s - p) // 2 + 1, (1,), generator=gen)) for s in shape)
            xs.append(dec[i, :, a:a + p, b:b + p, k:k + p])
            ts.append(tgt[i, :, a:a + p, b:b + p, k:k + p])
        loss = ((net(torch.stack(xs).float()) - torch.stack(ts).float()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        step += 1
        if time.time() - last > 300 or time.time() - t0 >= total:
            last = time.time()
            with torch.no_grad():
                v = np.mean([psnr(net(vdec[i:i + 1]).clamp(0, 1), vtgt[i:i + 1]) for i in range(len(VAL))])
            print(f"{(time.time() - t0) / 60:.1f} min, step {step}: validation PSNR {v:.3f} dB "
                  f"(gain {v - base:+.3f})", flush=True)


if __name__ == "__main__":
    main()
