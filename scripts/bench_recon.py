"""Reconstruction benchmark: every method side by side on held-out synthetic subjects and the MNI152 template.

    OMP_NUM_THREADS=1 python scripts/bench_recon.py --out docs/results_recon.md            # the issue's full set
    OMP_NUM_THREADS=1 python scripts/bench_recon.py --subjects 2 --cases kspace-r8 --out /tmp/r8.md   # a subset
    python scripts/bench_recon.py --merge /tmp/a.jsonl /tmp/b.jsonl --out docs/results_recon.md  # join runs

Volumes: the 2 mm MNI152 template and synthetic *test* subjects (seeds 20000-; their noise-free image
is the reference). Cases: kspace-r4 / kspace-r8 (8 birdcage coils, complex noise 0.005, Poisson mask,
12x12 calibration), denoise (Rician 5%), superres (x2 slice thickness along axis 2). Every (volume, case,
method) runs `reconstruct_file_with_std` on the simulated file in a fresh worker process (this script
with --worker), which reports PSNR / SSIM / NMSE against the reference (ldp_med.metrics), wall seconds
(model loading included), UNet evaluations (NFE) and its own peak RSS. Prior methods with --samples > 1
also report the Spearman correlation between the std map and the absolute error inside the head
(reference > 5% of its maximum).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import emit

CASES = {
    "kspace-r4": dict(task="kspace", accel=4.0, coils=8, noise=0.005, mask="poisson", calib=12),
    "kspace-r8": dict(task="kspace", accel=8.0, coils=8, noise=0.005, mask="poisson", calib=12),
    "denoise": dict(task="denoise", noise=0.05, noise_kind="rician"),
    "superres": dict(task="superres", factor=2, axis=2, noise=0.0),
}
METHODS = {"kspace": ("zero-filled", "cs", "tv", "prior", "dps"), "denoise": ("nlm", "prior", "dps"),
           "superres": ("cubic", "prior", "dps")}


def volume_of(name: str, split: str = "test"):
    """``template`` or a seed of ``split``: (noise-free Volume used as the reference, description)."""
    from ldp_med.data import synthetic
    from ldp_med.data.template import mni152_template
    from ldp_med.io.volume import Volume

    if name == "template":
        return mni152_template(2), "MNI152 2 mm template"
    seed = int(name)
    if synthetic.split_of(seed) != split:
        raise SystemExit(f"seed {seed} is not a {split} subject")
    subj = synthetic.make_subject(seed, return_clean=True)
    return Volume(subj["clean"], subj["affine"], {}), f"test subject {seed} ({subj['contrast']})"


def simulate(name: str, case: str, path: Path, split: str = "test") -> np.ndarray:
    """Write the simulated input of (volume, case) to ``path``; return the reference on the output grid."""
    from ldp_med.config import SimulateConfig
    from ldp_med.physics.simulate import simulate_volume

    vol, _ = volume_of(name, split)
    cfg = SimulateConfig(seed=0, **CASES[case])
    simulate_volume(vol, cfg, path)
    ref = vol.data
    if cfg.task == "superres":  # the fine grid covers the first factor * (n // factor) slices
        n = ref.shape[cfg.axis] // cfg.factor * cfg.factor
        ref = np.take(ref, np.arange(n), axis=cfg.axis)
    return ref


def recon_config(case: str):
    """The ReconstructConfig that matches the simulation of ``case`` (task, slice factor and axis)."""
    from ldp_med.config import ReconstructConfig, SimulateConfig

    sim = SimulateConfig(**CASES[case])
    return ReconstructConfig(task=sim.task, factor=sim.factor, axis=sim.axis)


def head_mask(ref: np.ndarray) -> np.ndarray:
    """The head: reference voxels above 5% of its maximum (where the std map is scored)."""
    return ref > 0.05 * ref.max()


def spearman_in_head(std: np.ndarray, recon: np.ndarray, ref: np.ndarray) -> float:
    """Spearman correlation of the std map with the absolute error, inside :func:`head_mask`."""
    from scipy.stats import spearmanr

    head = head_mask(ref)
    return float(spearmanr(std[head], np.abs(recon - ref)[head]).statistic)


def worker(args) -> None:
    """One reconstruction in this process; prints a JSON line."""
    from ldp_med.io.kspace import load_kspace
    from ldp_med.metrics import evaluate
    from ldp_med.reconstruct import reconstruct_file_with_std

    ref = np.load(args.reference)
    cfg = recon_config(args.case)
    cfg.posterior.samples = args.samples
    if args.steps:
        cfg.posterior.steps = args.steps
    t0 = time.perf_counter()
    vol, std = reconstruct_file_with_std(args.input, cfg, args.method)
    sec = time.perf_counter() - t0
    if args.input.endswith(".h5"):
        ref = load_kspace(args.input).reference
    row = {**evaluate(vol.data, ref), "sec": sec, "nfe": vol.meta.get("nfe", 0),
           "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if std is not None:
        row["spearman"] = spearman_in_head(std.data, vol.data, ref)
    print("RESULT " + json.dumps(row), flush=True)


def run_one(inp: Path, ref: Path, case: str, method: str, samples: int, steps: int | None) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--input", str(inp), "--reference", str(ref), "--case", case,
           "--method", method, "--samples", str(samples if method in ("prior", "dps") else 1)]
    if steps:
        cmd += ["--steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1][7:])


def table(rows: list[dict]) -> str:
    lines = ["| case | method | n | PSNR (dB) | SSIM | NMSE | s/volume | NFE | peak RSS GB | Spearman(std, err) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        for method in dict.fromkeys(r["method"] for r in rows if r["case"] == case):
            sel = [r for r in rows if r["case"] == case and r["method"] == method and "error" not in r]
            errs = [r["error"] for r in rows if r["case"] == case and r["method"] == method and "error" in r]
            if not sel:
                lines.append(f"| {case} | {method} | 0 | failed: {errs[0]} | | | | | | |")
                continue

            def ms(key, fmt):
                v = np.array([r[key] for r in sel], dtype=float)
                return f"{v.mean():{fmt}} ± {v.std():{fmt}}"

            sp = [r["spearman"] for r in sel if "spearman" in r]
            lines.append(f"| {case} | {method} | {len(sel)} | {ms('psnr', '.2f')} | {ms('ssim', '.4f')} | "
                         f"{ms('nmse', '.5f')} | {ms('sec', '.1f')} | {int(np.mean([r['nfe'] for r in sel]))} | "
                         f"{max(r['rss_gb'] for r in sel):.2f} | {f'{np.mean(sp):.3f}' if sp else ''} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=8, help="test subjects from seed 20000")
    ap.add_argument("--no-template", action="store_true")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--methods", nargs="+", default=None, help="subset of methods (default: all of each task)")
    ap.add_argument("--samples", type=int, default=1, help="posterior samples of the prior methods (> 1: std map and Spearman)")
    ap.add_argument("--steps", type=int, default=None, help="override PosteriorConfig.steps")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSONL",
                    help="only build the table from the rows of earlier runs (their --out .jsonl files)")
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

    names = ([] if args.no_template else ["template"]) + [str(s) for s in synthetic.seeds("test", args.subjects)]
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
                    label = f"{method} ({args.samples} samples)" if method in ("prior", "dps") and args.samples > 1 else method
                    row = {"volume": name, "case": case, "method": label,
                           **run_one(inp, ref, case, method, args.samples, args.steps)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    text = table(rows) + (f"\n\nVolumes: {', '.join(names)}; "
                          f"torch threads per worker: OMP_NUM_THREADS or torch's default.")
    emit(text, args.out)
    if args.out:
        Path(args.out).with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
