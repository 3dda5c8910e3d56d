"""Which map ranks the image tasks' error (validation subjects only; issue 15's std map, session 17).

    OMP_NUM_THREADS=1 python scripts/probe_std_image.py head:10006 denoise 8    # volume, case, posterior samples

Like probe_std.py for denoise / superres, where the result blends the closed sample with the classical estimate:
adds the disagreement with it, 1 - w, and the mixture variance of the blend. Results: docs/results.md, "Std map".
"""
import sys, tempfile
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import simulate, recon_config, head_mask, require_validation, spearman_ceiling
from scipy.stats import spearmanr
from scipy.ndimage import gaussian_filter
from ldp_med.config import PosteriorConfig
from ldp_med.io import load_volume
from ldp_med.models.pretrained import load_pretrained
from ldp_med.reconstruct import settle, build_problem, _close, classical_estimate
from ldp_med.sampling.posterior import reconstruct as sample
from ldp_med.sampling.closing import agreement_weights, closing_solve
from ldp_med.metrics import std_scale_for, ause, psnr
import dataclasses

seed, case, nsamp = sys.argv[1], sys.argv[2], int(sys.argv[3])
require_validation([int(seed.split(":")[-1])])
path = Path(tempfile.mkdtemp()) / (f"stdp_{seed.replace(':','-')}_{case}.nii.gz")
ref = simulate(seed, case, path, split="val")
cfg = recon_config(case, "prior", PosteriorConfig(samples=nsamp))
prior = load_pretrained()
data = load_volume(path)
problem = build_problem(data, case, cfg, None, path)
res = sample(prior, problem, cfg.posterior)
pre = res.samples
raw = dataclasses.replace(cfg, closing=dataclasses.replace(cfg.closing, image_agreement=0.0))
closed, _ = _close(problem, pre, raw, res.support)   # unblended
k = settle(cfg, problem).closing
pert = closing_solve(problem, pre, k.image_anchor, k.image_mu * problem.noise_std, k.iters,
                     wavelet=cfg.baseline.cs_wavelet, perturb=np.random.default_rng(cfg.posterior.seed))
c = classical_estimate(problem, cfg)[0]
tol = k.image_agreement * float(np.percentile(c, 99))
ws = agreement_weights(closed, c, tol)
blended = ws * closed + (1 - ws) * c
final = blended.mean(0)
w = ws.mean(0)
var_x = pert.var(0, ddof=1)
d2 = (closed.mean(0) - c) ** 2
maps = {
    "std_rto_unblended": np.sqrt(var_x),
    "std_rto_blended": (ws * pert + (1 - ws) * c).std(0, ddof=1),
    "std_pre": np.abs(pre).std(0, ddof=1),
    "rms_final_minus_pre": np.sqrt(np.mean((final - np.abs(pre)) ** 2, 0)),
    "disagree": np.sqrt(d2),
    "mixture": np.sqrt(w * var_x + (1 - w) * w * d2 + (1 - w) * problem.noise_std**2 / 4),
    "mixture2": np.sqrt(var_x + d2),
    "one_minus_w": 1 - w,
    "detail": np.abs(final - gaussian_filter(final, 1.0)),
    "final_intensity": final,
}
head = head_mask(ref)
err = final - ref
print(f"{seed} {case} psnr {psnr(final, ref):.2f} noise {problem.noise_std:.4g} mean w in head {w[head].mean():.3f}", flush=True)
S = lambda m: spearmanr(m[head], np.abs(err)[head]).statistic
print(f"  LOO oracle s=1: {spearman_ceiling(final, ref):.3f}")
for name, m in maps.items():
    for s in (0, 1):
        mm = np.sqrt(gaussian_filter(m**2, s)) if s else m
        print(f"  {name:22s} pool {s}: spearman {S(mm):.3f} scale {std_scale_for(err[head], mm[head]):.2f} ause {ause(err[head], mm[head]):.3f}", flush=True)
