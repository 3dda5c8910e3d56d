"""MONAI components: the latent posterior sampler as an ``Inferer`` and as (dictionary) transforms.

- :class:`LatentPriorReconstruct`: array transform, channel-first ``MetaTensor`` (1, X, Y, Z) with
  its affine (as ``LoadImage`` + ``EnsureChannelFirst`` give it) -> reconstruction ``MetaTensor``
  (1, X', Y', Z') on the acquisition grid (the fine grid for ``superres``) with its affine.
- :class:`LatentPriorReconstructd`: its dictionary wrapper (same arguments, plus keys), which can
  also store the std map under ``f"{key}_{std_postfix}"``; drops into a ``Compose`` after ``LoadImaged``.
- :class:`LatentPosteriorInferer`: a ``monai.inferers.Inferer`` over a batch (B, 1, X, Y, Z), or a
  :class:`KSpaceData` for the kspace task.

Images are magnitude volumes in any units; affines are RAS+ (an ``LPS`` MetaTensor is converted and
converted back).
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import collate_meta_tensor
from monai.inferers import Inferer
from monai.transforms import MapTransform, Transform

from ldp_med.config import BaselineConfig, PosteriorConfig, ReconstructConfig
from ldp_med.errors import InputError
from ldp_med.io.kspace import KSpaceData
from ldp_med.io.volume import Volume
from ldp_med.models.pretrained import Prior
from ldp_med.reconstruct import Reconstruction, reconstruct
from ldp_med.tasks import TASKS

__all__ = ["LatentPriorReconstruct", "LatentPriorReconstructd", "LatentPosteriorInferer"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _is_lps(meta: Mapping) -> bool:
    return str(meta.get("space", "RAS")).upper().endswith("LPS")


class LatentPriorReconstruct(Transform):
    """Reconstruct one image with the latent posterior sampler (the same path as ``ldp-med reconstruct``).

    Args:
        prior: the latent diffusion prior.
        task: "denoise" or "superres" for images ("kspace" takes a :class:`KSpaceData`).
        config: sampler settings (:class:`PosteriorConfig`; defaults if None).
        factor, axis: slice-thickness factor and axis (superres); None reads them from the image's voxel sizes
            (:func:`ldp_med.problems.slice_geometry`).
        noise_std: measurement noise std in the image's units; None reads the file's or estimates it.
        return_std: return ``(mean, std)`` (std None for one sample) instead of the mean.
        progress: progress bar over the steps.
        baseline: classical settings the problem builder reads (ESPIRiT calibration width); defaults if None.
    """

    def __init__(self, prior: Prior, task: str = "denoise", config: PosteriorConfig | None = None,
                 factor: int | None = None, axis: int | None = None, noise_std: float | None = None,
                 return_std: bool = False, progress: bool = False, baseline: BaselineConfig | None = None):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.prior, self.task = prior, task
        self.cfg = ReconstructConfig(method="prior", task=task, factor=factor, axis=axis,
                                     baseline=baseline or BaselineConfig(), posterior=config or PosteriorConfig())
        self.noise_std, self.return_std, self.progress = noise_std, return_std, progress

    def result(self, data: Volume | KSpaceData, prior: Prior | None = None) -> Reconstruction:
        """Run the sampler on a :class:`Volume` (denoise / superres) or :class:`KSpaceData` (kspace)."""
        return reconstruct(data, self.task, self.cfg, prior or self.prior, self.progress, self.noise_std)

    def __call__(self, img, prior: Prior | None = None):
        """Channel-first MetaTensor (1, X, Y, Z) (or a KSpaceData for kspace) -> MetaTensor (1, X', Y', Z').

        Raises:
            InputError: more than one channel, or no affine.
        """
        if isinstance(img, KSpaceData):
            res = self.result(img, prior)
            mean, std = (None if v is None else MetaTensor(torch.from_numpy(v.data)[None], affine=torch.as_tensor(v.affine))
                         for v in (res.volume, res.std))
            return (mean, std) if self.return_std else mean
        if not isinstance(img, MetaTensor):
            raise TypeError(f"expected a channel-first MetaTensor with an affine (LoadImage + EnsureChannelFirst), "
                            f"got {type(img).__name__}")
        source = img.meta.get("filename_or_obj") or None
        if img.ndim != 4 or img.shape[0] != 1:
            raise InputError(source, f"expected a single-channel image (1, X, Y, Z), got shape {tuple(img.shape)}")
        lps = _is_lps(img.meta)
        affine = img.affine.detach().cpu().numpy().astype(np.float64)
        affine = _LPS @ affine if lps else affine
        vol = Volume(img[0].detach().cpu().numpy().astype(np.float32), affine, {"source": source} if source else {})
        res = self.result(vol, prior)
        out_affine = _LPS @ res.volume.affine if lps else res.volume.affine
        mean = self._wrap(res.volume.data, out_affine, img)
        std = None if res.std is None else self._wrap(res.std.data, out_affine, img)
        return (mean, std) if self.return_std else mean

    @staticmethod
    def _wrap(arr: np.ndarray, affine: np.ndarray, like: MetaTensor) -> MetaTensor:
        meta = {k: copy.deepcopy(v) for k, v in like.meta.items() if k not in ("affine", "spatial_shape")}
        meta["spatial_shape"] = np.asarray(arr.shape)
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(arr))[None],
                          affine=torch.as_tensor(affine, dtype=torch.float64), meta=meta)


class LatentPriorReconstructd(MapTransform):
    """Dictionary wrapper of :class:`LatentPriorReconstruct` (after ``LoadImaged`` + ``EnsureChannelFirstd``).

    Each key's image is replaced by its reconstruction; with ``samples > 1`` in ``config`` and
    ``std_postfix`` set, the std map goes to ``f"{key}_{std_postfix}"``.

    Args:
        keys: keys to reconstruct.
        prior, task, config, factor, axis, noise_std, progress: as in :class:`LatentPriorReconstruct`.
        std_postfix: where to store the std map (None: do not store it).
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(self, keys, prior: Prior, task: str = "denoise", config: PosteriorConfig | None = None,
                 factor: int | None = None, axis: int | None = None, noise_std: float | None = None,
                 std_postfix: str | None = "std", progress: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = LatentPriorReconstruct(prior, task, config, factor, axis, noise_std, return_std=True,
                                                progress=progress)
        self.std_postfix = std_postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mean, std = self.transform(d[key])
            d[key] = mean
            if std is not None and self.std_postfix:
                d[f"{key}_{self.std_postfix}"] = std
        return d


class LatentPosteriorInferer(Inferer):
    """``monai.inferers.Inferer`` running the latent posterior sampler.

    ``inferer(inputs)`` with a channel-first batch (B, 1, X, Y, Z) MetaTensor (per-item affines), a single
    image (1, X, Y, Z), or a :class:`KSpaceData` (task kspace). ``network`` may be a :class:`Prior` to use
    instead of the one given here (MONAI passes the network per call).

    Args:
        prior, task, config, factor, axis, noise_std, progress: as in :class:`LatentPriorReconstruct`.
        return_std: return ``(mean, std)`` (std None for one sample).

    Returns (from ``__call__``): MetaTensor(s) of the input's layout on the acquisition grid.
    """

    def __init__(self, prior: Prior, task: str = "denoise", config: PosteriorConfig | None = None,
                 factor: int | None = None, axis: int | None = None, noise_std: float | None = None,
                 return_std: bool = False, progress: bool = False):
        super().__init__()
        self.transform = LatentPriorReconstruct(prior, task, config, factor, axis, noise_std, True, progress)
        self.return_std = return_std

    def __call__(self, inputs, network: Prior | None = None, *args, **kwargs):
        if network is not None and not isinstance(network, Prior):
            raise TypeError(f"network must be a ldp_med Prior (or None), got {type(network).__name__}")
        if isinstance(inputs, KSpaceData) or (isinstance(inputs, torch.Tensor) and inputs.ndim == 4):
            mean, std = self.transform(inputs, network)
            return (mean, std) if self.return_std else mean
        if not isinstance(inputs, MetaTensor) or inputs.ndim != 5:
            raise TypeError("inputs must be a MetaTensor (B, 1, X, Y, Z) or (1, X, Y, Z), or KSpaceData")
        means, stds = [], []
        for b in range(inputs.shape[0]):
            item = inputs[b]  # MetaTensor indexing keeps item b's affine and meta
            mean, std = self.transform(item, network)
            means.append(mean)
            stds.append(std)
        mean = collate_meta_tensor(means)  # batched MetaTensor, per-item affines (B, 4, 4)
        std = None if stds[0] is None else collate_meta_tensor(stds)
        return (mean, std) if self.return_std else mean
