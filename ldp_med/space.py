"""The model space in one place: moving volumes there and back, and the map the sampler uses.

- :class:`ToModelSpace` / :class:`ToModelSpaced` / :class:`ModelSpaceInfo`: MONAI transforms (training,
  ``autoencode``, pipelines) with an exact MONAI inverse.
- :class:`SpaceMap`: the same geometry and intensity map as one differentiable resampling per direction,
  for the posterior sampler; built by :meth:`SpaceMap.for_volume` from :meth:`ToModelSpace.geometry`,
  which runs the same MONAI steps lazily (affines only, no resampling).

The *model space* is the fixed grid the VAE and the diffusion prior work on: shape ``grid``
(e.g. 96x112x96), isotropic ``voxel_mm`` voxels whose axes point to RAS+ (world-aligned, no
rotation), intensities in [0, 1]. :class:`ToModelSpace` is one MONAI ``Compose`` applied to a
channel-first ``MetaTensor`` (every step is recorded in its ``applied_operations``):

1. :class:`PercentileScaleIntensity`: ``ScaleIntensityRangePercentiles(lower=0, upper=99.5,
   b_min=0, b_max=1, clip=True)`` that also records the range it used, so that MONAI's inverse
   maps model units back to scanner units exactly (``x * scale + offset``; only the top
   ``100 - upper`` % of voxels, clipped to 1, are not recovered). It runs *first*, on the acquired
   voxels, so the percentiles do not depend on resampling or padding, and everything padded later
   (zeros in model units) is the volume's minimum (background) in scanner units. 99.5 rather
   than 100 keeps a few hot voxels (vessels, fat, artefacts) from compressing the tissue range.
2. ``Orientation(axcodes="RAS")``: flips / permutes axes only (LPS or other voxel orders).
3. ``Spacing(pixdim=voxel_mm, mode=3, padding_mode="grid-constant", diagonal=True)``: resamples
   to isotropic voxels on a world-aligned (diagonal) affine with a cubic spline (MONAI's scipy backend);
   an oblique acquisition is rotated onto the world axes, its new bounding box filled with zeros outside
   the acquired field of view.
4. optionally ``CropForeground`` (voxels above ``foreground_threshold``, ``margin`` voxels kept):
   off for reconstruction, on for training so the head, not the field of view, is centred.
5. ``ResizeWithPadOrCrop(spatial_size=grid)``: symmetric zero padding / central cropping.
6. a clip to [0, 1] (the spline's overshoot at steps; not inverted).

Centring: the centre of the resampled field of view (or of the foreground box when cropping)
lands on the grid centre (to within half a voxel when the size difference is odd). The model affine
(``ModelSpaceInfo.model_affine``) is per volume and places the grid in the volume's own world coordinates.

Aligned mode (``ToModelSpace(..., transform=M)``, issue 17): ``M`` (4, 4) maps the input's world mm to
the model's MNI world mm (:func:`ldp_med.align.estimate_alignment`). Steps 2-5 are replaced by one MONAI
``SpatialResample`` (the same cubic spline, zeros outside the input) onto the model grid placed at
``inv(M) @ model_affine_mni`` in the input's world, where ``model_affine_mni`` is the grid's MNI affine
(``ModelConfig.affine``; if empty, :func:`ldp_med.data.synthetic.grid_affine` for the synthetic grid).
A partial field of view then lands where it belongs in the grid instead of on its centre; the
intensity step (1) and the exact MONAI inverse are unchanged.

The way back, :meth:`ModelSpaceInfo.to_acquisition`, is MONAI's ``Compose.inverse`` on a
``MetaTensor`` carrying the forward pass's ``applied_operations``: the result has the input's
shape and voxel order and is meant to be saved with the input's affine. What was cropped away
going in (a field of view larger than the grid) comes back as the volume's minimum.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta
from monai.networks.layers import AffineTransform
from monai.transforms import (
    BorderPad,
    Compose,
    CropForeground,
    InvertibleTransform,
    MapTransform,
    Orientation,
    ResizeWithPadOrCrop,
    ScaleIntensityRange,
    Spacing,
    SpatialResample,
)
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import TraceKeys

from ldp_med.errors import InputError
from ldp_med.io.volume import Volume, check_affine, check_volume_array

__all__ = [
    "DEFAULT_UPPER_PERCENTILE",
    "PercentileScaleIntensity",
    "ToModelSpace",
    "ToModelSpaced",
    "ModelSpaceInfo",
    "SpaceMap",
    "foreground",
    "model_grid_affine",
]

#: Upper intensity percentile mapped to 1 (see the module docstring for why not 100).
DEFAULT_UPPER_PERCENTILE = 99.5
_DEFAULT_GRID = (96, 112, 96)
#: resampling of :class:`ToModelSpace` both ways: MONAI's cubic spline (scipy's, order 3), zero outside the input. A
#: trilinear pull at sub-voxel offsets averages neighbours: a 2 mm head there and back through the 2 mm grid kept
#: 32.5 dB trilinear, 45 dB with the spline (docs/results.md, "Cubic splines in the model-space transform")
_SPLINE = dict(mode=3, padding_mode="grid-constant")
#: the spline's overshoot at steps, clipped back to the model's range (not inverted: MONAI's inverse skips it)
_CLIP = ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True)
#: the aligned placement's field of view widened by 2 edge-replicated voxels before the spline (cropped off again on
#: the way back): where a head meets the field of view's edge the spline otherwise rings against the zeros beyond it.
#: Validation heads cut to half their field of view (crop:10000-10003): autoencode +0.55 to +1.34 dB, round trip +0.84
#: to +1.97; 4 voxels add 0.04-0.09 dB more, 8 nothing (docs/results.md, "A partial field of view's edge"). The model
#: image holds those 2 voxels' replicas past the field of view (the prior's band of context, never mapped back).
EDGE_VOXELS = 2
_EDGE = BorderPad(spatial_border=EDGE_VOXELS, mode="replicate")


class PercentileScaleIntensity(InvertibleTransform):
    """``ScaleIntensityRangePercentiles(lower, upper, b_min=0, b_max=1, clip=True)`` that can be undone.

    The percentiles are computed exactly as MONAI's ``ScaleIntensityRangePercentiles`` does
    (``monai...percentile`` over all channels, ``relative=False``) and applied with
    ``ScaleIntensityRange``; the range used, ``a_min``/``a_max``, is pushed onto the MetaTensor's
    ``applied_operations`` so that ``inverse`` (and ``Compose.inverse``) maps ``y`` back to
    ``y * (a_max - a_min) + a_min``.

    When ``a_max == a_min`` (more than ``100 - upper`` % of the voxels share the minimum, e.g. a
    tiny object in an empty field of view) the maximum is used for ``a_max`` instead.

    Args:
        lower: lower percentile in [0, 100], mapped to 0.
        upper: upper percentile in (lower, 100], mapped to 1.

    Raises:
        ValueError: (on call) for a constant image, whose scale is undefined.
    """

    def __init__(self, lower: float = 0.0, upper: float = DEFAULT_UPPER_PERCENTILE) -> None:
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"need 0 <= lower < upper <= 100, got lower={lower}, upper={upper}")
        self.lower = float(lower)
        self.upper = float(upper)

    def range_of(self, img: torch.Tensor) -> tuple[float, float]:
        """``(a_min, a_max)`` that ``__call__`` maps to (0, 1) for ``img`` (any shape)."""
        a_min = float(percentile(img, self.lower))
        a_max = float(percentile(img, self.upper))
        if a_max <= a_min:
            a_max = float(img.max())
        if a_max <= a_min:
            raise ValueError(f"constant image (all voxels {a_min}); the intensity scale is undefined")
        return a_min, a_max

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Scale ``img`` (C, *spatial) to [0, 1]; a MetaTensor records ``a_min``/``a_max``."""
        a_min, a_max = self.range_of(img)
        out = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)(img)
        if isinstance(out, MetaTensor):
            self.push_transform(out, extra_info={"a_min": a_min, "a_max": a_max})
        return out

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """Map model units back: ``data * (a_max - a_min) + a_min`` (pops this step's record)."""
        info = self.pop_transform(data)
        extra = info[TraceKeys.EXTRA_INFO]
        return data * (extra["a_max"] - extra["a_min"]) + extra["a_min"]


class _Above:
    """Picklable ``select_fn`` for CropForeground: voxels above ``threshold``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


@dataclass
class ModelSpaceInfo:
    """What :class:`ToModelSpace` did to one volume, enough to undo it.

    Attributes:
        pipeline: the MONAI ``Compose`` that ran forward (its inverse undoes the applied operations;
            MONAI matches them to these transform instances).
        applied_operations: the forward pass's MONAI trace (list of dicts), oldest first.
        meta: the model-space MetaTensor's ``meta`` (its ``affine`` is the model affine).
        scale: intensity scale, scanner units per model unit (``a_max - a_min``).
        offset: intensity offset, the scanner value of model 0 (``a_min``).
        original_shape: (X, Y, Z) of the input volume.
        original_affine: float64 (4, 4) voxel-to-RAS affine of the input (save results with it).
        model_affine: float64 (4, 4) voxel-to-RAS affine of the model-space tensor.
        grid: the model grid (X, Y, Z).
    """

    pipeline: Compose
    applied_operations: list
    meta: dict
    scale: float
    offset: float
    original_shape: tuple[int, ...]
    original_affine: np.ndarray
    model_affine: np.ndarray
    grid: tuple[int, int, int]
    channels: int = field(default=1)

    def to_intensity(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Model units -> scanner units (``x * scale + offset``), without any spatial change."""
        return x * self.scale + self.offset

    def to_acquisition(self, tensor: torch.Tensor | np.ndarray) -> np.ndarray:
        """Bring a model-space volume back to the input's grid and intensity units.

        Args:
            tensor: float (1, *grid) (or (*grid)) in model units, e.g. a reconstruction.

        Returns:
            float32 array of the input's shape (X, Y, Z) and voxel order ((C, X, Y, Z) when the input
            had several channels), in the input's intensity units; save it with ``original_affine``.

        Raises:
            ValueError: for a wrong shape or non-finite values.
        """
        x = torch.as_tensor(np.asarray(tensor) if not isinstance(tensor, torch.Tensor) else tensor)
        if isinstance(x, MetaTensor):
            x = x.as_tensor()
        x = x.detach().to("cpu", torch.float32)
        if tuple(x.shape) == tuple(self.grid):
            x = x[None]
        if tuple(x.shape) != (self.channels, *self.grid):
            expected = (self.channels, *self.grid)
            raise ValueError(f"expected a model-space tensor of shape {expected}, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("model-space tensor has NaN or Inf values")
        mt = MetaTensor(
            x.clone(),
            meta=copy.deepcopy(self.meta),
            applied_operations=copy.deepcopy(self.applied_operations),
        )
        with torch.no_grad():
            out = self.pipeline.inverse(mt)
        out = out.as_tensor() if isinstance(out, MetaTensor) else out
        arr = out.numpy().astype(np.float32, copy=False)
        if self.channels == 1:
            arr = arr[0]
        if arr.shape[-3:] != tuple(self.original_shape):  # a MONAI inverse bug would show up here
            raise RuntimeError(f"inverse gave shape {arr.shape}, expected {tuple(self.original_shape)}")
        return arr


class _ResampleTo(SpatialResample):
    """MONAI ``SpatialResample`` onto one fixed destination grid (affine + size), usable in a ``Compose``.

    The inverse is ``SpatialResample``'s (back to the recorded source affine and size).
    """

    def __init__(self, dst_affine: np.ndarray, spatial_size: Sequence[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.dst_affine = torch.as_tensor(np.asarray(dst_affine, np.float64))
        self.spatial_size = tuple(int(n) for n in spatial_size)

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        return super().__call__(img, dst_affine=self.dst_affine, spatial_size=self.spatial_size, lazy=lazy)


def model_grid_affine(grid: Sequence[int], voxel_mm: float, model_affine=None) -> np.ndarray:
    """The model grid's voxel-to-MNI affine: ``model_affine`` if given (e.g. ``ModelConfig.affine``), else
    :func:`ldp_med.data.synthetic.grid_affine` for the synthetic grid, else ``voxel_mm`` RAS voxels with the
    grid centred where the synthetic grid's centre is."""
    if model_affine is not None and np.size(model_affine):
        a = np.asarray(model_affine, np.float64)
        if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-12:
            raise ValueError(f"model affine must be a finite non-singular (4, 4) matrix, got {a.tolist()}")
        return a
    from ldp_med.data import synthetic

    ref = synthetic.grid_affine()
    grid = tuple(int(n) for n in grid)
    if grid == tuple(synthetic.GRID) and float(voxel_mm) == float(synthetic.VOXEL_MM):
        return ref
    centre = ref[:3, :3] @ ((np.asarray(synthetic.GRID) - 1) / 2) + ref[:3, 3]
    a = np.diag([float(voxel_mm)] * 3 + [1.0])
    a[:3, 3] = centre - a[:3, :3] @ ((np.asarray(grid) - 1) / 2)
    return a


class ToModelSpace:
    """Acquisition space -> model space (see the module docstring for the steps and centring).

    Args:
        grid: model grid (X, Y, Z); any sizes.
        voxel_mm: isotropic model voxel size in mm.
        crop_foreground: crop to the foreground box (model intensity > ``foreground_threshold``,
            plus ``margin`` voxels) before padding / cropping to ``grid``; for training.
        upper_percentile: intensity percentile mapped to 1 (the minimum maps to 0).
        foreground_threshold: model-unit threshold of the foreground (above typical background noise).
        margin: voxels kept around the foreground box.
        transform: None (centring, the default) or the aligned mode: float (4, 4) input world mm ->
            model (MNI) world mm, e.g. ``estimate_alignment(volume).matrix``; the pipeline then
            resamples onto the grid at ``inv(transform) @ model_affine`` (one volume's placement).
        model_affine: the grid's voxel-to-MNI affine for the aligned mode (see :func:`model_grid_affine`).

    Calling it on a :class:`Volume` returns a plain float32 tensor (1, *grid) in [0, 1] and a
    :class:`ModelSpaceInfo`; :meth:`apply` is the MONAI-style step on a channel-first MetaTensor.
    """

    def __init__(
        self,
        grid: Sequence[int] = _DEFAULT_GRID,
        voxel_mm: float = 2.0,
        crop_foreground: bool = False,
        upper_percentile: float = DEFAULT_UPPER_PERCENTILE,
        foreground_threshold: float = 0.05,
        margin: int = 2,
        transform: np.ndarray | None = None,
        model_affine: np.ndarray | None = None,
    ) -> None:
        grid = tuple(int(n) for n in grid)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"grid must be 3 positive sizes, got {grid}")
        if not voxel_mm > 0:
            raise ValueError(f"voxel_mm must be > 0, got {voxel_mm}")
        self.grid = grid
        self.voxel_mm = float(voxel_mm)
        self.crop_foreground = bool(crop_foreground)
        self.scaler = PercentileScaleIntensity(lower=0.0, upper=upper_percentile)
        self.transform = None
        if transform is not None:
            if self.crop_foreground:
                raise ValueError("crop_foreground does not apply with an alignment transform")
            m = np.asarray(transform, np.float64)
            if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-12:
                raise ValueError("transform must be a finite non-singular (4, 4) world-to-world matrix")
            self.transform = m
            mni = model_grid_affine(grid, self.voxel_mm, model_affine)
            dst = np.linalg.solve(m, mni)  # inv(M) @ model_affine_mni: the grid in the input's world
            self.pipeline = Compose([self.scaler, _EDGE, _ResampleTo(dst, grid, **_SPLINE), _CLIP])
            return
        steps: list = [
            self.scaler,
            Orientation(axcodes="RAS", labels=None),
            Spacing(pixdim=self.voxel_mm, diagonal=True, **_SPLINE),
        ]
        if self.crop_foreground:
            steps.append(CropForeground(select_fn=_Above(foreground_threshold), margin=margin, allow_smaller=True))
        steps += [ResizeWithPadOrCrop(spatial_size=grid), _CLIP]
        self.pipeline = Compose(steps)

    @classmethod
    def from_config(cls, model_cfg, **kwargs) -> "ToModelSpace":
        """Build from a ``ModelConfig`` (its ``grid``, ``voxel_mm`` and, with ``transform=``, ``affine``);
        ``kwargs`` as in ``__init__``."""
        if kwargs.get("transform") is not None and kwargs.get("model_affine") is None:
            kwargs["model_affine"] = np.asarray(model_cfg.affine, np.float64) if len(model_cfg.affine) else None
        return cls(grid=tuple(model_cfg.grid), voxel_mm=model_cfg.voxel_mm, **kwargs)

    def apply(self, img: torch.Tensor) -> MetaTensor:
        """Channel-first MetaTensor (C, X, Y, Z) with an affine -> MetaTensor (C, *grid), traced.

        Raises:
            InputError: non-finite or constant data (named by the MetaTensor's ``filename_or_obj``).
            TypeError / ValueError: not a MetaTensor, or not channel-first 3-D.
        """
        if not isinstance(img, MetaTensor):
            raise TypeError(
                f"expected a MetaTensor carrying an affine (e.g. from LoadImaged), got {type(img).__name__}"
            )
        if img.ndim != 4:
            raise ValueError(
                f"expected channel-first (C, X, Y, Z), got shape {tuple(img.shape)}; use EnsureChannelFirstd"
            )
        if not get_track_meta():
            raise RuntimeError("MONAI meta tracking is off (set_track_meta(False)); the result could not be undone")
        source = img.meta.get("filename_or_obj") or None
        if not torch.isfinite(img.as_tensor()).all():
            raise InputError(source, "NaN or Inf values; cannot move to model space")
        if img.numel() == 0 or float(img.max()) == float(img.min()):
            raise InputError(source, "constant intensity; cannot scale it to [0, 1]")
        check_affine(img.affine.numpy(), source)
        img = img.float() if img.dtype != torch.float32 else img
        with torch.no_grad():
            return self.pipeline(img)

    def geometry(self, volume: Volume) -> tuple[np.ndarray, float, float]:
        """``(model_affine, scale, offset)`` that :meth:`__call__` would give ``volume``, without resampling.

        The spatial steps run in MONAI's lazy mode (pending affines only), so the geometry is the one
        computation the transform does, at the cost of a percentile. Not for ``crop_foreground``
        (its box depends on the resampled data).
        """
        if self.crop_foreground:
            raise ValueError("geometry() does not apply with crop_foreground")
        source = volume.meta.get("source")
        data = check_volume_array(volume.data, source)  # also refuses NaN / Inf
        affine = check_affine(volume.affine, source)
        mt = MetaTensor(torch.from_numpy(np.ascontiguousarray(data)[None]), affine=torch.as_tensor(affine, dtype=torch.float64))
        try:
            a_min, a_max = self.scaler.range_of(mt)
        except ValueError:
            raise InputError(source, "constant intensity; cannot scale it to [0, 1]") from None
        for step in self.pipeline.transforms[1:-1]:  # the spatial steps (not the scaler and the clip)
            mt = step(mt, lazy=True)
        return np.asarray(mt.peek_pending_affine(), np.float64), a_max - a_min, a_min

    def _info(self, out: MetaTensor, orig_shape, orig_affine) -> ModelSpaceInfo:
        ops = out.applied_operations
        scale_op = next(op for op in reversed(ops) if op.get(TraceKeys.ID) == id(self.scaler))
        a_min, a_max = scale_op[TraceKeys.EXTRA_INFO]["a_min"], scale_op[TraceKeys.EXTRA_INFO]["a_max"]
        return ModelSpaceInfo(
            pipeline=self.pipeline,
            applied_operations=copy.deepcopy(ops),
            meta=copy.deepcopy(out.meta),
            scale=float(a_max - a_min),
            offset=float(a_min),
            original_shape=tuple(int(n) for n in orig_shape),
            original_affine=np.asarray(orig_affine, dtype=np.float64).copy(),
            model_affine=out.affine.numpy().astype(np.float64),
            grid=self.grid,
            channels=int(out.shape[0]),
        )

    def forward(self, img: Volume | MetaTensor) -> tuple[MetaTensor, ModelSpaceInfo]:
        """Like ``__call__`` but also accepts a channel-first MetaTensor and returns the traced MetaTensor."""
        if isinstance(img, Volume):
            source = img.meta.get("source")
            data = check_volume_array(img.data, source)
            affine = check_affine(img.affine, source)
            mt = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(data)[None].copy()),
                affine=torch.as_tensor(affine, dtype=torch.float64),
                meta={"filename_or_obj": str(source) if source is not None else ""},
            )
        elif isinstance(img, MetaTensor):
            mt = img
        else:
            raise TypeError(f"expected a Volume or a channel-first MetaTensor, got {type(img).__name__}")
        orig_shape = tuple(mt.shape[1:])
        orig_affine = mt.affine.numpy()
        out = self.apply(mt)
        return out, self._info(out, orig_shape, orig_affine)

    def __call__(self, volume: Volume) -> tuple[torch.Tensor, ModelSpaceInfo]:
        """Move ``volume`` to model space.

        Args:
            volume: data float32 (X, Y, Z), RAS+ affine (4, 4), any voxel sizes / orientation.

        Returns:
            ``(x, info)``: ``x`` a plain float32 tensor (1, *grid) in [0, 1]; ``info`` a
            :class:`ModelSpaceInfo` whose ``to_acquisition`` undoes it.

        Raises:
            InputError: bad data or affine (non-finite, not 3-D, singular, constant), naming
                ``volume.meta["source"]``.
        """
        out, info = self.forward(volume)
        return out.as_tensor().contiguous(), info

    def inverse(self, img: MetaTensor) -> MetaTensor:
        """MONAI inverse of :meth:`apply`: model-space MetaTensor (with its trace) -> acquisition space."""
        with torch.no_grad():
            return self.pipeline.inverse(img)


class ToModelSpaced(MapTransform, InvertibleTransform):
    """Dictionary wrapper of :class:`ToModelSpace` for MONAI pipelines (after LoadImaged + EnsureChannelFirstd).

    Each key's value (a channel-first MetaTensor, or a :class:`Volume`) is replaced by its traced
    model-space MetaTensor (C, *grid); ``inverse`` (hence ``Compose.inverse`` and ``Invertd``)
    undoes it. With ``info_postfix`` set, the :class:`ModelSpaceInfo` is also stored under
    ``f"{key}_{info_postfix}"`` (not collatable by a DataLoader, so off by default).

    Args:
        keys: keys to transform.
        grid, voxel_mm, crop_foreground, upper_percentile, foreground_threshold, margin, transform,
            model_affine: as in :class:`ToModelSpace` (``transform``: one placement for every key).
        info_postfix: where to store the info, or None.
        allow_missing_keys: do not fail on missing keys.
    """

    def __init__(
        self,
        keys,
        grid: Sequence[int] = _DEFAULT_GRID,
        voxel_mm: float = 2.0,
        crop_foreground: bool = False,
        upper_percentile: float = DEFAULT_UPPER_PERCENTILE,
        foreground_threshold: float = 0.05,
        margin: int = 2,
        info_postfix: str | None = None,
        allow_missing_keys: bool = False,
        transform: np.ndarray | None = None,
        model_affine: np.ndarray | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ToModelSpace(
            grid=grid,
            voxel_mm=voxel_mm,
            crop_foreground=crop_foreground,
            upper_percentile=upper_percentile,
            foreground_threshold=foreground_threshold,
            margin=margin,
            transform=transform,
            model_affine=model_affine,
        )
        self.info_postfix = info_postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            out, info = self.transform.forward(d[key])
            d[key] = out
            if self.info_postfix:
                d[f"{key}_{self.info_postfix}"] = info
        return d

    def inverse(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform.inverse(d[key])
        return d


def foreground(data: np.ndarray) -> np.ndarray:
    """Voxels above a low threshold between the background and the tissue (Otsu on a robust range), bool (X, Y, Z)."""
    from skimage.filters import threshold_otsu

    lo, hi = np.percentile(data, [1.0, 99.5])
    if hi <= lo:
        return data > lo
    t = threshold_otsu(np.clip(data, lo, hi).ravel()[:: max(1, data.size // 500_000)])
    # half of Otsu: keeps dark tissue (CSF in T1, grey matter in FLAIR) inside the foreground
    return data > lo + 0.5 * (t - lo)


class SpaceMap:
    """Acquisition grid <-> model grid, with the intensity map ``acquisition = model * scale + offset``.

    Resampling is trilinear (MONAI ``AffineTransform``, pull direction, voxel coordinates; differentiable, which the
    latent fit needs), zero outside the source grid, where ``ToModelSpace`` resamples with a cubic spline. Trilinear
    here on purpose: with ``posterior.keep_detail`` the sampler's image on the acquisition grid is the prior's image
    mapped back plus the data-consistent image's ``detail``, which for a trilinear round trip is that image's high
    band, so the prior brings the low band and the data the high band; a cubic spline (which loses almost nothing
    on the round trip) measured 0.2 dB worse on validation heads at R=4, and the spline for ``to_model`` alone 0.1
    dB worse (docs/results.md, "Cubic splines in the model-space transform"). Acquisition
    voxels outside the model grid (a field of view larger than the model's) take a fallback image;
    ``coverage`` (X, Y, Z) in [0, 1] says how much of each acquisition voxel the model grid covers.

    Args:
        acq_shape, acq_affine: acquisition grid (X, Y, Z) and its voxel-to-RAS affine.
        grid, model_affine: model grid and its affine (per volume, from ``ToModelSpace``).
        scale, offset: intensity map (scanner units per model unit, and the scanner value of model 0).
    """

    def __init__(self, acq_shape, acq_affine: np.ndarray, grid, model_affine: np.ndarray, scale: float, offset: float):
        self.acq_shape = tuple(int(n) for n in acq_shape)
        self.grid = tuple(int(n) for n in grid)
        self.scale, self.offset = float(scale), float(offset)
        acq_affine = np.asarray(acq_affine, np.float64)
        model_affine = np.asarray(model_affine, np.float64)
        self._acq_affine, self._model_affine = acq_affine, model_affine
        # pull matrices: output voxel index -> input voxel index
        self._to_acq = torch.as_tensor(np.linalg.solve(model_affine, acq_affine), dtype=torch.float32)
        self._to_model = torch.as_tensor(np.linalg.solve(acq_affine, model_affine), dtype=torch.float32)
        self._resample = AffineTransform(normalized=False, mode="bilinear", padding_mode="zeros",
                                         align_corners=True, reverse_indexing=True, zero_centered=False)
        ones = torch.ones(1, 1, *self.grid)
        self.coverage = self._resample(ones, self._to_acq, self.acq_shape)[0, 0].clamp(0, 1)
        #: input world -> model (MNI) world matrix of the aligned placement (None: centring)
        self.transform: np.ndarray | None = None
        #: the :class:`ldp_med.align.Alignment` estimated by ``for_volume(..., align=True)`` (else None)
        self.alignment = None
        #: the full model grid this map's grid is a box of, and the box's first voxel (:meth:`cropped`)
        self.full_grid, self.box_start = self.grid, (0, 0, 0)

    @classmethod
    def for_volume(cls, volume: Volume, model_cfg, align: bool = False, transform=None,
                   align_cfg=None) -> "SpaceMap":
        """The map of :class:`ToModelSpace` (``model_cfg``'s grid and voxel size) for ``volume``'s grid.

        Args:
            volume: the acquisition-grid image the geometry and intensity scale come from.
            model_cfg: a ``ModelConfig`` (``grid``, ``voxel_mm``, ``affine``: the grid's MNI affine).
            align: False: centring (``ToModelSpace``'s default, exactly as before); True: estimate the
                placement with :func:`ldp_med.align.estimate_alignment` (``align_cfg``), kept in
                ``self.alignment`` and ``self.transform``.
            transform: a known input-world -> MNI-world matrix (4, 4), or an earlier estimate's
                :class:`ldp_med.align.Alignment` (kept in ``self.alignment``); implies the aligned placement and
                skips the estimate.
            align_cfg: :class:`ldp_med.align.AlignConfig` of the estimate (None: defaults).
        """
        alignment = None
        if transform is not None and hasattr(transform, "matrix"):  # an Alignment
            alignment, transform = transform, transform.matrix
        elif transform is None and align:
            from ldp_med.align import estimate_alignment

            alignment = estimate_alignment(volume, align_cfg)
            transform = alignment.matrix
        space = ToModelSpace.from_config(model_cfg, transform=transform)
        model_affine, scale, offset = space.geometry(volume)
        out = cls(volume.shape, volume.affine, model_cfg.grid, model_affine, scale, offset)
        out.transform, out.alignment = space.transform, alignment
        return out

    def cropped(self, multiple: int, margin: int) -> "SpaceMap":
        """The same map on the smallest box of the model grid that holds the field of view plus ``margin`` voxels,
        its corners on multiples of ``multiple`` voxels (so the networks' down-sampling lattice is the full grid's)
        and clipped to the grid; ``self`` when the box is the whole grid. Networks then run on the box only: for a
        partial field of view (a slab, a part of the brain) most of the grid is empty padding."""
        n = np.array(self.acq_shape, np.float64)
        corners = np.array(np.meshgrid(*[[-0.5, m - 0.5] for m in n], indexing="ij")).reshape(3, -1)
        pts = self._to_acq.double().numpy() @ np.vstack([corners, np.ones(corners.shape[1])])
        grid = np.array(self.grid)
        lo = np.clip(np.floor((pts[:3].min(1) - margin) / multiple) * multiple, 0, None).astype(int)
        hi = np.minimum(np.ceil((pts[:3].max(1) + margin + 1) / multiple) * multiple, grid).astype(int)
        if np.all(lo == 0) and np.all(hi == grid) or np.any(hi <= lo):
            return self
        model_affine = self._model_affine.copy()
        model_affine[:3, 3] += model_affine[:3, :3] @ lo
        out = SpaceMap(self.acq_shape, self._acq_affine, tuple(hi - lo), model_affine, self.scale, self.offset)
        out.transform, out.alignment = self.transform, self.alignment
        out.full_grid, out.box_start = self.full_grid, tuple(int(v) + s for v, s in zip(lo, self.box_start))
        return out

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        """The part of a full-model-grid tensor (..., *full_grid) that this map's grid covers."""
        return t[(...,) + tuple(slice(s, s + n) for s, n in zip(self.box_start, self.grid))]

    @property
    def coverage_fraction(self) -> float:
        """Fraction of the acquisition field of view that lies inside the model grid."""
        return float(self.coverage.mean())

    def foreground_coverage(self, image: np.ndarray) -> float:
        """Fraction of ``image``'s foreground (:func:`foreground`: the anatomy, not the air around it) that lies
        inside the model grid; the field of view's (:attr:`coverage_fraction`) when the image has no foreground."""
        fg = torch.from_numpy(np.ascontiguousarray(foreground(np.asarray(image))))
        return float(self.coverage[fg].mean()) if bool(fg.any()) else self.coverage_fraction

    def mask_to_acq(self, mask: torch.Tensor) -> np.ndarray:
        """A model-grid map (*grid) in [0, 1] (e.g. ``Prior.support``) on the acquisition grid, float32 (X, Y, Z);
        0 where the model grid does not reach. No intensity map."""
        mask = self.crop(mask) if tuple(mask.shape) == self.full_grid else mask
        out = self._resample(mask.float().cpu()[None, None], self._to_acq, self.acq_shape)[0, 0]
        return out.clamp(0, 1).numpy().astype(np.float32)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Acquisition image (B, X, Y, Z), acquisition units -> model image (B, 1, *grid) in [0, 1]."""
        m = (x.float() - self.offset) / self.scale
        out = self._resample(m[:, None], self._to_model.to(x.device), self.grid)
        return out.clamp(0, 1)

    def detail(self, x: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        """What the model grid cannot hold of an acquisition image (B, X, Y, Z): ``x - to_acq(to_model(x), x)``,
        the detail its round trip through the model grid (trilinear both ways, clamped to the model's range) loses;
        0 where the model grid does not reach. ``m``: ``to_model(x)`` where the caller has it already."""
        return x.float() - self.to_acq(self.to_model(x) if m is None else m, x)

    def to_acq(self, m: torch.Tensor, fallback: torch.Tensor | None = None) -> torch.Tensor:
        """Model image (B, 1, *grid) -> acquisition image (B, X, Y, Z) in acquisition units.

        Args:
            m: model-space image(s), model units.
            fallback: acquisition-grid image(s) (B or 1, X, Y, Z) used where the model grid does not
                reach (weighted by ``1 - coverage``); None means the background value ``offset``.
        """
        if m.ndim == 4:
            m = m[:, None]
        theta, cov = self._to_acq.to(m.device), self.coverage.to(m.device)
        inside, outside = cov * self.offset, 1 - cov  # the same for every sample
        rest = None if fallback is None else fallback.to(m.device)
        n = len(m) if rest is None else max(len(m), len(rest))  # either may be one, broadcast over the other
        out = torch.empty((n, *self.acq_shape), device=m.device)
        for b in range(n):  # one at a time: 8 samples of a 1 mm head held 1.6 GB of grids and products, now 0.5
            i = b if len(m) > 1 else 0
            v = self._resample(m[i : i + 1].float(), theta, self.acq_shape)[0, 0]
            r = self.offset if rest is None else rest[b if len(rest) > 1 else 0].float()
            out[b] = v.mul_(self.scale).add_(inside).add_(outside * r)
        return out
