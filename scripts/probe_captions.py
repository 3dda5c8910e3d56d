"""Can the caption embeddings tell the contrasts apart at all? A linear probe on the caption pool.

    python scripts/probe_captions.py

Fits a logistic regression (scikit-learn, C = 1) on the all-MiniLM-L6-v2 embeddings of every caption
of synthetic.caption_pool and reports its accuracy on bench_generate's unseen paraphrase sets (kept in
scripts/benchlib.py): the ceiling for a prior whose text path is a linear map of the embedding (needs
ldp-med[eval,text]).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from benchlib import PARAPHRASES, PARAPHRASES_B
from ldp_med.data import synthetic
from ldp_med.models.text import load_text_encoder


def main() -> None:
    enc = load_text_encoder()
    pool = synthetic.caption_pool()
    x = enc.embed([c for _, c in pool]).numpy()
    y = np.array([lab for lab, _ in pool])
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    for name, sets in (("A", PARAPHRASES), ("B", PARAPHRASES_B)):
        texts = [t for c in synthetic.CLASSES for t in sets[c]]
        truth = np.array([k for k, c in enumerate(synthetic.CLASSES) for _ in sets[c]])
        pred = clf.predict(enc.embed(texts).numpy())
        wrong = [f"{t!r} -> {synthetic.CLASSES[p]}" for t, p, q in zip(texts, pred, truth) if p != q]
        print(f"paraphrases {name}: {int((pred == truth).sum())}/{len(texts)} correct", *wrong, sep="\n  ")


if __name__ == "__main__":
    main()
