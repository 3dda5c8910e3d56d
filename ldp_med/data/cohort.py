"""Training images in RAM: the synthetic cohort (cached to disk once) or a folder of healthy scans."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ldp_med.config import DataConfig, ModelConfig
from ldp_med.errors import InputError


@dataclass
class TrainingImages:
    """``images`` float16 (N, 1, X, Y, Z) in [0, 1] on the model grid; ``labels`` int64 (N,) (-1: unknown).

    ``caption_pool``: (label, caption) pairs that describe a class rather than one image (every wording
    the synthetic cohort's captions can take); empty where captions belong to their images.
    ``clean`` and ``expected`` (``data.noise_free``; float16, shaped and scaled as ``images``): each image
    before Rician noise, and its Rician mean (the noisy image's noise-free expectation).
    """

    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    description: str
    caption_pool: list[tuple[int, str]] = field(default_factory=list)
    clean: torch.Tensor | None = None
    expected: torch.Tensor | None = None


def model_units(image: np.ndarray) -> np.ndarray:
    """Scale an image exactly as :class:`~ldp_med.space.ToModelSpace` does (0..99.5th percentile -> [0, 1])."""
    from ldp_med.space import PercentileScaleIntensity

    return np.asarray(PercentileScaleIntensity()(torch.from_numpy(image)[None]))[0].astype(np.float32)


def noise_free_units(image: np.ndarray, clean: np.ndarray, sigma: float) -> tuple[np.ndarray, ...]:
    """``(image, clean, expected)`` float32 in the model units of the noisy ``image`` (its scale, as
    :func:`model_units`): the image, its noise-free version and that one's Rician mean at ``sigma``."""
    from ldp_med.physics.noise import rician_mean
    from ldp_med.space import PercentileScaleIntensity

    a_min, a_max = PercentileScaleIntensity().range_of(torch.from_numpy(image))
    expected = rician_mean(torch.from_numpy(clean), sigma).numpy()
    return tuple(np.clip((v - a_min) / (a_max - a_min), 0, 1).astype(np.float32) for v in (image, clean, expected))


def load_training_images(data: DataConfig, model: ModelConfig, progress: bool = True) -> TrainingImages:
    """The training split only: synthetic seeds ``0 .. data.synthetic - 1`` or every scan of ``data.folder``."""
    if data.folder and (data.sharp or data.heads):
        raise InputError(data.folder, "data.sharp and data.heads render the synthetic cohort (from the 1 mm template, "
                                      "in a synthetic head); a folder of scans has no such rendering")
    if data.folder and data.noise_free:
        raise InputError(data.folder, "data.noise_free needs the synthetic cohort (a folder of scans has no "
                                      "noise-free images)")
    if data.folder:
        from ldp_med.data.folder import load_folder

        imgs = load_folder(data.folder, model, cache_dir=data.cache_dir, progress=progress)
        n = imgs.shape[0]
        return TrainingImages(torch.from_numpy(imgs).half()[:, None], torch.full((n,), -1), [""] * n,
                              f"{n} healthy scans from {data.folder}")
    from ldp_med.data import synthetic

    if tuple(model.grid) != synthetic.GRID:
        raise InputError(None, f"the synthetic cohort lives on {synthetic.GRID}, the model grid is {tuple(model.grid)}")
    if not 0 < data.synthetic <= 10000:
        raise InputError(None, f"data.synthetic must be in 1..10000 (the training seeds), got {data.synthetic}")
    for name in ("sharp", "heads"):
        if not 0 <= (n := getattr(data, name)) <= data.synthetic:
            raise InputError(None, f"data.{name} must be in 0..data.synthetic ({data.synthetic}), got {n}")
    seeds = synthetic.seeds("train", data.synthetic)
    sources = [(data.cache_dir, seeds, {})]  # (folder, seeds, build_cohort's rendering)
    if data.sharp:
        sources.append((str(Path(data.cache_dir) / "sharp"), seeds[: data.sharp], {"sharp": True}))
    if data.heads:
        sources.append((str(Path(data.cache_dir) / "heads"), seeds[: data.heads], {"head": True}))
    imgs, clean, expected, labels, captions = [], [], [], [], []
    for folder, todo, rendering in sources:
        synthetic.build_cohort(folder, todo, progress=progress, **rendering)
        entries = {e["seed"]: e for e in synthetic.load_index(folder)}
        for s in tqdm(todo, desc="load cohort", disable=not progress):
            if data.noise_free:
                units = noise_free_units(*synthetic.load_subject(folder, entries[s], clean=True))
                for out, v in zip((imgs, clean, expected), units):
                    out.append(v.astype(np.float16))
            else:
                imgs.append(model_units(synthetic.load_subject(folder, entries[s])).astype(np.float16))
            labels.append(entries[s]["label"])
            captions.append(entries[s]["caption"])
    labels = torch.tensor(labels)

    def stacked(arrays):
        return torch.from_numpy(np.stack(arrays))[:, None] if arrays else None

    return TrainingImages(stacked(imgs), labels, captions,
                          f"synthetic healthy cohort (MNI152 2009a), training seeds 0-{data.synthetic - 1}"
                          + (f", seeds 0-{data.sharp - 1} also rendered from the 1 mm template" if data.sharp else "")
                          + (f", seeds 0-{data.heads - 1} also in a synthetic skull and scalp" if data.heads else "")
                          + (", noise-free images" if data.noise_free else ""),
                          synthetic.caption_pool(), stacked(clean), stacked(expected))
