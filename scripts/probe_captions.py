"""Which contrast does the model folder's caption classifier read in each unseen paraphrase?

    python scripts/probe_captions.py [--model FOLDER]

The classifier (``caption_weight`` / ``caption_bias`` extras, fitted on the training captions of
synthetic.caption_pool by ldp_med.models.text.caption_classifier) is what ``ldp-med generate --prompt``
uses to pick the class that goes with a prompt (ldp_med.models.conditioning.prompt_labels). Reported on
bench_generate's unseen paraphrase sets A, B and C (scripts/benchlib.py), which it never saw; "null" means
no contrast reached probability 0.5 (the prompt then steers alone). Needs ldp-med[text].
"""

from __future__ import annotations

import argparse

from benchlib import PARAPHRASES, PARAPHRASES_B, PARAPHRASES_C
from ldp_med.data import synthetic
from ldp_med.models.conditioning import null_class, prompt_context, prompt_labels
from ldp_med.models.pretrained import load_pretrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    prior = load_pretrained(ap.parse_args().model)
    names = [*prior.config.class_names, "null"]
    for name, sets in (("A", PARAPHRASES), ("B", PARAPHRASES_B), ("C", PARAPHRASES_C)):
        texts = [t for c in synthetic.CLASSES for t in sets[c]]
        truth = [names.index(c) for c in synthetic.CLASSES for _ in sets[c]]
        read = [int(prompt_labels(prior, prompt_context(prior, t, 1))[0]) for t in texts]
        wrong = [f"{t!r} ({names[q]}) -> {names[p]}" for t, p, q in zip(texts, read, truth) if p != q]
        unread = sum(p == null_class(prior) for p in read)
        print(f"paraphrases {name}: {sum(p == q for p, q in zip(read, truth))}/{len(texts)} read as asked, "
              f"{unread} as null", *wrong, sep="\n  ")


if __name__ == "__main__":
    main()
