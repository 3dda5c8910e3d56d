"""Where the prior's margin over CS lies on a head with skull: brain, the rest of the head, air (issue 17).

    cd scripts && OMP_NUM_THREADS=2 python probe_head_regions.py --out ../docs/probe_head_regions.md

Issue 17 asks whether the prior should learn heads (skull, scalp, face) or model the brain and leave the rest to
the data and the closing solve's sparsity term. The shipped prior is the second. This probe measures what that
does on the NLin6Asym head with skull (a template no training image came from; test data, scored only): the
bench_recon simulation (8 coils, R=4 / R=8, seed 0), CS and the prior (shipped defaults, one process), PSNR over
three regions with the whole reference's range: the brain (nimare's brain mask of the same template, on its grid),
the rest of the head (reference above 5% of its maximum, outside the brain: skull, scalp, face, neck) and the air.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from benchlib import CASES, HEADS, emit, head_mask, packaged_file, recon_config, simulate

from ldp_med.io.kspace import load_kspace
from ldp_med.metrics import data_range
from ldp_med.reconstruct import reconstruct_file

#: the brain mask nimare ships beside each NLin6Asym head (same grid)
MASKS = {"head-nlin6": "nimare/resources/templates/tpl-MNI152NLin6Asym_res-02_desc-brain_mask.nii.gz",
         "head-nlin6-1mm": "nimare/resources/templates/tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"}


def region_psnr(rec: np.ndarray, ref: np.ndarray, region: np.ndarray) -> float:
    """PSNR over ``region`` with the whole reference's range (as ``ldp_med.metrics.psnr`` takes it)."""
    mse = float(np.mean((rec[region].astype(np.float64) - ref[region]) ** 2))
    return 10 * np.log10(data_range(ref) ** 2 / mse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", nargs="+", default=["head-nlin6"], choices=list(MASKS))
    ap.add_argument("--cases", nargs="+", default=["kspace-r4", "kspace-r8"], choices=[c for c in CASES if "kspace" in c])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    lines = ["| head | case | region | voxels | CS PSNR (dB) | prior PSNR (dB) | prior - CS |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.heads:
            brain = nib.load(packaged_file(HEADS[name][0], MASKS[name])).get_fdata() > 0.5
            for case in args.cases:
                inp = Path(tmp) / f"{name}-{case}.h5"
                simulate(name, case, inp)
                ref = load_kspace(inp).reference  # the file's own reference, as bench_recon's worker scores it
                assert brain.shape == ref.shape, (brain.shape, ref.shape)
                recs = {m: reconstruct_file(inp, recon_config(case, m)).volume.data for m in ("cs", "prior")}
                head = head_mask(ref)
                regions = {"brain": brain, "rest of the head": head & ~brain, "air": ~head & ~brain,
                           "whole volume": np.ones_like(brain)}
                for region, mask in regions.items():
                    cs, prior = (region_psnr(recs[m], ref, mask) for m in ("cs", "prior"))
                    lines.append(f"| {HEADS[name][3].split(',')[0]} | {case} | {region} | {int(mask.sum())} | "
                                 f"{cs:.2f} | {prior:.2f} | {prior - cs:+.2f} |")
                    print(lines[-1], flush=True)
    emit(lines, args.out)


if __name__ == "__main__":
    main()
