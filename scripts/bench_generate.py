"""Generation benchmark: speed, contrast fidelity and diversity of `ldp-med generate` at several guidance scales.

    OMP_NUM_THREADS=1 python scripts/bench_generate.py --out docs/results_generate.md

- Contrast classifier (ldp_med.generation_metrics): tissue-intensity features + logistic regression,
  fitted on the synthetic cohort's *training* split only (cache/cohort, as training used), checked on
  validation subjects.
- Fidelity: the share of generated volumes the classifier assigns to the requested contrast, for
  `--contrast` (the class's stored caption embedding), for training captions (random draws from the
  cohort's caption pool, synthetic.caption_pool), and for three sets of paraphrased prompts that never occur
  in training (PARAPHRASES, PARAPHRASES_B and PARAPHRASES_C of scripts/benchlib.py; checked against every caption
  of the pool). Prompts go through `ldp-med generate --prompt`'s path: the embedding as context and the class the
  model folder's caption classifier reads in it (ldp_med.models.conditioning.prompt_labels; the null class when
  it reads none); the table's "read as asked" column is how often that class was the asked one.
- Diversity: mean pairwise MS-SSIM among N generated volumes of one class, against the same figure
  among N real held-out *test* subjects of that class (seeds from 20000).
- Time: seconds per volume (DDIM sampling + decode, excluding model loading), batch of N and batch of 1.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from tqdm import tqdm

from benchlib import PARAPHRASES, PARAPHRASES_B, PARAPHRASES_C, emit
from ldp_med.config import DEFAULT_GUIDANCE
from ldp_med.data import synthetic
from ldp_med.generation_metrics import ContrastClassifier, mean_pairwise_ms_ssim
from ldp_med.models.pretrained import load_pretrained
from ldp_med.models.conditioning import prompt_labels
from ldp_med.sampling.generate import decode, sample_latents

def fit_classifier(cache: str, train: list[dict], n_val: int) -> tuple[ContrastClassifier, float]:
    clf = ContrastClassifier(synthetic.CLASSES).fit([synthetic.load_subject(cache, e) for e in train],
                                                    [e["label"] for e in train])
    val = [synthetic.make_subject(s) for s in synthetic.seeds("val", n_val)]
    pred = clf.predict([v["image"] for v in val])
    acc = float(np.mean([synthetic.CLASSES[p] == v["contrast"] for p, v in zip(pred, val)]))
    return clf, acc


def real_test_subjects(per_class: int) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {c: [] for c in synthetic.CLASSES}
    for seed in synthetic.seeds("test"):
        c = synthetic.subject_meta(seed)["contrast"]
        if len(out[c]) < per_class:
            out[c].append(synthetic.make_subject(seed)["image"])
        if all(len(v) == per_class for v in out.values()):
            return out
    raise RuntimeError("not enough test subjects of every class")


def sample(prior, labels, context, steps, guidance, seed) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    z = sample_latents(prior, labels, steps, guidance, torch.Generator().manual_seed(seed), False, context)
    imgs = decode(prior, z).numpy()
    return imgs, (time.perf_counter() - t0) / len(labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--n", type=int, default=8, help="volumes per class for --contrast fidelity and diversity")
    ap.add_argument("--per-prompt", type=int, default=1, help="volumes per caption / paraphrase")
    ap.add_argument("--prompts-at", type=float, nargs="+", default=[3.0],
                    help="guidance values at which captions and paraphrases are also evaluated")
    ap.add_argument("--samples-png", default=None, help="also save 2 --contrast volumes per class at the first "
                                                         "--prompts-at guidance as a contact sheet")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cache", default="cache/cohort", help="the training cohort cache (its train split fits the classifier)")
    ap.add_argument("--out", default=None, help="Markdown file for the tables")
    args = ap.parse_args()

    train = [e for e in synthetic.load_index(args.cache) if e["split"] == "train"]
    clf, val_acc = fit_classifier(args.cache, train, 20)
    real = real_test_subjects(args.n)
    real_div = {c: mean_pairwise_ms_ssim(v) for c, v in real.items()}
    prior = load_pretrained(args.model)
    names = prior.config.class_names
    pool = synthetic.caption_pool()
    train_caps = {c for _, c in pool} | {e["caption"] for e in train}
    leaked = [p for ps in (PARAPHRASES, PARAPHRASES_B, PARAPHRASES_C) for pp in ps.values() for p in pp if p in train_caps]
    if leaked:
        raise SystemExit(f"paraphrases occur in training captions: {leaked}")
    rng = np.random.default_rng(0)
    prompts = {"training captions": {c: [str(x) for x in rng.choice([t for k, t in pool if k == ci], 4, replace=False)]
                                     for ci, c in enumerate(names)},
               "unseen paraphrases A": PARAPHRASES, "unseen paraphrases B": PARAPHRASES_B,
               "unseen paraphrases C": PARAPHRASES_C}
    from ldp_med.models.text import load_text_encoder

    encoder = load_text_encoder()
    dim = prior.config.unet.cross_attention_dim

    def embed(texts: list[str]) -> torch.Tensor:
        return encoder.embed(texts).float().reshape(len(texts), 1, dim)

    _, t_single = sample(prior, torch.tensor([0]), None, args.steps, DEFAULT_GUIDANCE, 0)
    rows, sheet = [], {}
    for g in args.guidance:
        for ci, c in enumerate(tqdm(names, desc=f"guidance {g:g}")):
            imgs, t_batch = sample(prior, torch.full((args.n,), ci), None, args.steps, g, 1000 + ci)
            pred = clf.predict(list(imgs))
            rows.append({"g": g, "source": "--contrast", "class": c, "hits": int((pred == ci).sum()), "n": len(imgs),
                         "div": mean_pairwise_ms_ssim(list(imgs)), "sec": t_batch})
            if g == args.prompts_at[0]:
                sheet.update({f"{c} #{k + 1} ({names[p]})": imgs[k] for k, p in enumerate(pred[:2])})
            if g not in args.prompts_at:
                continue
            for source, by_class in prompts.items():
                texts = list(by_class[c])
                ctx = embed(texts).repeat_interleave(args.per_prompt, 0)
                labels = prompt_labels(prior, ctx)
                imgs, _ = sample(prior, labels, ctx, args.steps, g, 2000 + ci)
                pred = clf.predict(list(imgs))
                rows.append({"g": g, "source": source, "class": c, "hits": int((pred == ci).sum()), "n": len(imgs),
                             "read": int((labels == ci).sum()),
                             "misses": [(t, names[p]) for t, p in zip(np.repeat(texts, args.per_prompt), pred) if p != ci]})
            print([r for r in rows if r["g"] == g and r["class"] == c], flush=True)
    if args.samples_png and sheet:
        from ldp_med.report import save_slices_png

        save_slices_png(args.samples_png, sheet, force=True, scales={k: (0.0, 1.0) for k in sheet},
                        title=f"DDIM {args.steps} steps, guidance {args.prompts_at[0]:g} (classifier's call in brackets)")

    lines = [f"Contrast classifier: fitted on {len(train)} "
             f"training-split subjects, accuracy on 20 validation subjects {val_acc:.0%}.", "",
             "| guidance | condition | volumes | fidelity | prompt read as asked | " + " | ".join(f"MS-SSIM {c} gen / real" for c in names) + " |",
             "|---|---|---|---|---|" + "---|" * len(names)]
    for g in args.guidance:
        for source in ("--contrast", *prompts):
            sel = [r for r in rows if r["g"] == g and r["source"] == source]
            if not sel:
                continue
            hits, n = sum(r["hits"] for r in sel), sum(r["n"] for r in sel)
            div = " | ".join(f"{r['div']:.3f} / {real_div[r['class']]:.3f}" if "div" in r else "" for r in sel)
            read = f"{sum(r['read'] for r in sel) / n:.1%}" if "read" in sel[0] else ""
            lines.append(f"| {g:g} | {source} | {n} | {hits / n:.1%} | {read} | {div} |")
    misses = [f"{r['g']:g}: \"{t}\" ({r['class']}) -> {got}" for r in rows for t, got in r.get("misses", [])]
    if misses:
        lines += ["", "Prompts whose volume the classifier assigned to another contrast (guidance: prompt (asked) -> got):",
                  "", *[f"- {m}" for m in misses]]
    per_class = [r for r in rows if r["source"] == "--contrast"]
    worst = max(abs(r["div"] - real_div[r["class"]]) for r in per_class)
    lines += ["", f"Largest |MS-SSIM gen - real| over classes and guidance: {worst:.3f} "
                  f"(MS-SSIM: MONAI, 4 scales, kernel 7; {args.n} volumes per class, {args.n} real test subjects).",
              "", "| steps | s/volume, batch 1 | s/volume, batch of {} | torch threads |".format(args.n), "|---|---|---|---|",
              f"| {args.steps} | {t_single:.1f} | {np.mean([r['sec'] for r in per_class]):.1f} | {torch.get_num_threads()} |"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
