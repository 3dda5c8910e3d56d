"""Classical denoisers side by side on simulated *validation* volumes (never test subjects): NLM, noise2self and,
where the ``[eval]`` extra is installed, BM4D; Rician noise 5%, sigma from the tissue. Small parts of brains (like
nibabel's 33x41x25 real part, no air around them) and whole 2 mm heads; PSNR in dB over the whole volume / inside the
head (``benchlib.head_mask``), where the air's Rician floor, which none of them removes, does not count.

    cd scripts && OMP_NUM_THREADS=2 python probe_denoisers.py [--steps 1000]   # noise2self's training steps
    cd scripts && OMP_NUM_THREADS=2 python probe_denoisers.py --residual-z 0     # noise2self's 3x3x3 residual window
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchlib import head_mask, volume_of

#: (validation volume, the part of it kept: None for the whole volume)
VOLUMES = [("10004", (slice(30, 63), slice(35, 76), slice(30, 55))),
           ("noisy:10004", (slice(0, 48), slice(0, 56), slice(20, 44))),
           ("10007", (slice(25, 60), slice(30, 70), slice(35, 62))),
           ("noisy:10008", (slice(40, 90), slice(50, 100), slice(10, 40))),
           ("head:10009", (slice(10, 60), slice(0, 60), slice(40, 70))),
           ("noisy:10005", None), ("head:10006", None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000, help="noise2self's training steps (its default: 2000)")
    ap.add_argument("--residual-z", type=float, default=1.0,
                    help="noise2self's residual window intervals (its default: 1; 0: 3x3x3 everywhere)")
    args = ap.parse_args()
    from ldp_med.baselines import denoise_bm4d, denoise_nlm
    from ldp_med.config import SimulateConfig
    from ldp_med.io.volume import Volume
    from ldp_med.noise2self import noise2self_denoise as n2s
    from ldp_med.physics import estimate_rician_noise
    from ldp_med.physics.simulate import simulate_denoise

    def noise2self_denoise(y, sigma):
        return n2s(y, sigma, steps=args.steps, residual_z=args.residual_z)

    try:
        import bm4d  # noqa: F401
        methods = {"nlm": lambda y, s: denoise_nlm(y), "bm4d": denoise_bm4d, "noise2self": noise2self_denoise}
    except ImportError:
        methods = {"nlm": lambda y, s: denoise_nlm(y), "noise2self": noise2self_denoise}
    print("| validation volume | shape | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name, part in VOLUMES:
        vol, _ = volume_of(name, "val")
        ref = vol.data if part is None else vol.data[part] / np.percentile(vol.data[part], 99.5)
        noisy = simulate_denoise(Volume(ref.astype(np.float32), vol.affine, {}),
                                 SimulateConfig(task="denoise", noise=0.05, noise_kind="rician", seed=0)).data
        head, peak = head_mask(ref), float(ref.max() - ref.min())
        sigma = estimate_rician_noise(noisy)
        cells = []
        for method, run in methods.items():
            if method == "bm4d" and part is None:  # 1-2 minutes per whole volume
                cells.append("")
                continue
            t0 = time.perf_counter()
            out = run(noisy, sigma)
            db = [10 * np.log10(peak**2 / np.mean((out[m] - ref[m]) ** 2)) for m in (slice(None), head)]
            cells.append(f"{db[0]:.2f} / {db[1]:.2f} ({time.perf_counter() - t0:.1f} s)")
        print(f"| {name}{'' if part is None else ' (part)'} | {'x'.join(map(str, ref.shape))} | " + " | ".join(cells) + " |",
              flush=True)


if __name__ == "__main__":
    main()
