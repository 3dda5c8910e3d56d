"""Which map ranks the k-space reconstruction's error (validation subjects only; issue 15's std map, session 17).

    OMP_NUM_THREADS=1 python scripts/probe_std.py 10000 kspace-r8 8    # seed, case, posterior samples

Runs the shipped prior with the closing solve, then scores candidate maps by Spearman with |error| inside the
head (raw and Gaussian-smoothed by 1 and 2 voxels), the 90% scale and AUSE: the closed samples' spread, the spread
before the closing solve, the distance of the result to the samples, the spread of randomize-then-optimize solves
(perturbed data), the spread of the data's own solves from the samples and the result's distance to them, local
image detail; and the Spearman ceiling (a map that knows every neighbour's true error). Results: docs/results.md, "Std map".
"""
import sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import simulate, recon_config, head_mask, require_validation, spearman_ceiling
from scipy.stats import spearmanr
from scipy.ndimage import gaussian_filter
from ldp_med.config import PosteriorConfig
from ldp_med.io.kspace import load_kspace
from ldp_med.models.pretrained import load_pretrained
from ldp_med.reconstruct import build_problem, settle, _close
from ldp_med.sampling.posterior import reconstruct as sample, compressed
from ldp_med.sampling.closing import closing_solve
from ldp_med.metrics import std_scale_for, ause, psnr

seed, case, nsamp = sys.argv[1], sys.argv[2], int(sys.argv[3])
require_validation([int(seed.split(":")[-1])])
task = "kspace" if case.startswith("kspace") else case
path = Path(tempfile.mkdtemp()) / (f"std_{seed.replace(':','-')}_{case}{'.h5' if task=='kspace' else '.nii.gz'}")
ref = simulate(seed, case, path, split="val")
cfg = recon_config(case, "prior", PosteriorConfig(samples=nsamp))
prior = load_pretrained()
if task == "kspace":
    data = load_kspace(path); ref = data.reference
else:
    from ldp_med.io import load_volume
    data = load_volume(path)
problem = build_problem(data, task, cfg, None, path)
cfg = settle(cfg, problem)
t0 = time.time()
res = sample(prior, problem, cfg.posterior)
pre = res.samples
closed, _ = _close(problem, pre, cfg, res.support)
t1 = time.time()
final = np.abs(closed).mean(0)
maps = {}
maps["std_closed"] = np.abs(closed).std(0, ddof=1)
maps["std_pre"] = np.abs(pre).std(0, ddof=1)
maps["rms_final_minus_pre"] = np.sqrt(np.mean((final - np.abs(pre)) ** 2, 0))
maps["abs_final_minus_premean"] = np.abs(final - np.abs(pre).mean(0))
# randomize-then-optimize: each sample's closing solve on data with fresh noise (the shipped mechanism)
if problem.is_complex:
    c = cfg.closing
    op, y = compressed(problem, c.coil_energy)
    # the data's own solve from each sample (closing.agreement's): its spread, and how far the result is from it
    free_c = closing_solve(problem, pre, 0.0, c.mu, c.agreement_iters, wavelet=cfg.baseline.cs_wavelet, operator=op, y=y)
    free = np.abs(free_c)
    rto = np.abs(closing_solve(problem, pre, c.anchor, c.mu, c.iters,
                               weights=res.support if c.anchor_support else None, wavelet=cfg.baseline.cs_wavelet,
                               operator=op, y=y, perturb=np.random.default_rng(1), starts=free_c if c.from_free else None))
    maps["std_rto"] = rto.std(0, ddof=1)
    print("rto mean psnr", psnr(rto.mean(0), ref), flush=True)
    maps["std_free"] = free.std(0, ddof=1)
    maps["abs_final_minus_free"] = np.abs(final - free.mean(0))
maps["detail"] = np.abs(final - gaussian_filter(final, 1.0))
head = head_mask(ref)
err = (final - ref)
print(f"{seed} {case} psnr {psnr(final, ref):.2f} time {t1-t0:.0f}s noise {problem.noise_std:.4g}", flush=True)
for name, m in list(maps.items()):
    for s in (0, 1, 2):
        mm = gaussian_filter(m, s) if s else m
        rho = spearmanr(mm[head], np.abs(err)[head]).statistic
        sc = std_scale_for(err[head], mm[head])
        a = ause(err[head], mm[head])
        print(f"  {name:26s} smooth {s}: spearman {rho:.3f} scale {sc:.2f} ause {a:.3f}", flush=True)
print(f"  Spearman ceiling (benchlib.spearman_ceiling): {spearman_ceiling(final, ref):.3f}", flush=True)
