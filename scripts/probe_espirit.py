"""ESPIRiT's grid against the reconstruction: each validation volume's k-space simulated (benchlib's cases), its
coil maps estimated by ESPIRiT on the whole grid and on the coarse one (``max_voxels`` 1,310,720 and 65,536), then
the prior and CS run with each; PSNR against the container's reference. Validation volumes only.

    OMP_NUM_THREADS=2 python probe_espirit.py --out /tmp/espirit   # from scripts/; prints one JSON line per run
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from ldp_med.io.kspace import load_kspace  # noqa: E402
from ldp_med.metrics import psnr  # noqa: E402
from ldp_med.models.pretrained import load_pretrained  # noqa: E402
from ldp_med.physics.coils import espirit_maps  # noqa: E402
from ldp_med.reconstruct import reconstruct  # noqa: E402

GRIDS = {"whole": 1_310_720, "coarse": 65_536}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--volumes", nargs="+", default=["10000", "10001", "val-conte"])
    ap.add_argument("--cases", nargs="+", default=["kspace-r4", "kspace-r8"])
    ap.add_argument("--methods", nargs="+", default=["prior", "cs"])
    args = ap.parse_args()
    benchlib.require_validation([int(v) for v in args.volumes if v.isdigit()])
    args.out.mkdir(parents=True, exist_ok=True)
    prior = load_pretrained(None)
    for name in args.volumes:
        maps = {}
        for case in args.cases:
            h5 = args.out / f"{name}.{case}.h5"
            h5.unlink(missing_ok=True)
            benchlib.simulate(name, case, h5, split="val")
            if not maps:  # the calibration region is the same in every case (one seed): the maps too
                kspace = load_kspace(h5).kspace
                for label, limit in GRIDS.items():
                    start = time.perf_counter()
                    maps[label] = espirit_maps(kspace, calib=12, kernel_width=6, max_voxels=limit)
                    seconds = time.perf_counter() - start
                    print(json.dumps({"name": name, "maps": label, "espirit_s": seconds}), flush=True)
            for label in GRIDS:
                for method in args.methods:
                    data = load_kspace(h5)
                    data.sensitivity_maps = maps[label]
                    start = time.perf_counter()
                    rec = reconstruct(data, "kspace", benchlib.recon_config(case, method), prior)
                    print(json.dumps({"name": name, "case": case, "maps": label, "method": method,
                                      "psnr": psnr(rec.volume.data, data.reference),
                                      "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
