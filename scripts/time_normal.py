"""Time ``MRIOperator.normal`` (``A^H A``) against its session-45 formulation (out of place, ``einsum`` coil sum).

Random coil maps and a Poisson-like mask (a quarter of the phase-encode plane, fully sampled readout) on the 2 mm
model grid, 8 and 3 coils (3: what ``coil_energy`` 0.99 keeps of the birdcage simulation), one and four samples; 20
calls per timing, best of three, both formulations checked equal first. Run it as ``ldp-med`` runs, huge pages on
(docs/results.md, "Huge pages for large tensors"; docs/methods.md):

    THP_MEM_ALLOC_ENABLE=1 OMP_NUM_THREADS=2 python scripts/time_normal.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ldp_med.physics.mri import MRIOperator

SHAPE = (96, 112, 96)


def einsum_normal(op: MRIOperator, x: torch.Tensor) -> torch.Tensor:
    """Session 45's ``normal``: a new coil-sized array at every step, the coil sum by ``einsum``."""
    mask, maps, maps_conj, dims = op._shifted_on(x)
    v = maps * torch.fft.ifftshift(x, dim=dims)[:, None]
    v = torch.fft.ifftn(mask * torch.fft.fftn(v, dim=dims, norm="ortho"), dim=dims, norm="ortho")
    return torch.fft.fftshift(torch.einsum("bcxyz,bcxyz->bxyz", maps_conj, v), dim=dims)


def best_ms(f, calls: int = 20, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - t) / calls * 1e3)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    mask = (np.random.default_rng(0).random(SHAPE[1:]) < 0.25).astype(np.float32)[None]
    print("| coils | samples | einsum (ms) | in place (ms) |\n|---|---|---|---|")
    for coils, batch in ((8, 1), (3, 1), (3, 4)):
        maps = torch.complex(torch.randn(1, coils, *SHAPE), torch.randn(1, coils, *SHAPE)) * 0.3
        x = torch.complex(torch.randn(batch, *SHAPE), torch.randn(batch, *SHAPE))
        op = MRIOperator(mask, maps)
        torch.testing.assert_close(op.normal(x), einsum_normal(op, x), atol=1e-4, rtol=1e-4)
        old, new = best_ms(lambda: einsum_normal(op, x)), best_ms(lambda: op.normal(x))
        print(f"| {coils} | {batch} | {old:.1f} | {new:.1f} |")


if __name__ == "__main__":
    main()
