"""Folder datasets of healthy scans for training, cached on the model grid with MONAI's PersistentDataset.

A *source* is one of:

- a folder, searched recursively: every ``*.nii`` / ``*.nii.gz`` file is a scan, and every folder
  that directly holds DICOM files (``.dcm``/``.ima`` or the ``DICM`` marker) is one series (read
  with its subfolders; the search does not descend into it). Hidden files and folders are skipped;
  other files (sidecar JSON, text) are ignored.
- a ``.csv`` file with a column ``image``, or a ``.json`` file holding a list of paths or of
  ``{"image": path}`` objects. Relative paths are resolved against the list file's folder.

:func:`load_folder` moves every scan to the model grid with
``ToModelSpaced(crop_foreground=True)`` (see :mod:`ldp_med.space`) and caches the result
per scan in ``cache_dir/folder-<hash>/``, where ``<hash>`` covers the model-space settings (grid,
voxel size, percentile, cropping) and the MONAI version. Each scan's cache file name is MONAI's
hash of ``{"image": path, "stamp": size and mtime}``, so an edited or replaced file is re-read
and an unchanged one never is.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import monai
import numpy as np
import torch
from monai.data import PersistentDataset
from monai.transforms import Compose, MapTransform

from ldp_med.space import DEFAULT_UPPER_PERCENTILE, ToModelSpaced
from ldp_med.errors import InputError, LdpError
from ldp_med.io.loaders import is_dicom_file, load_volume
from ldp_med.io.nifti import is_nifti_path

__all__ = ["list_scans", "load_folder", "folder_cache_dir"]

_CACHE_VERSION = 1
_FOREGROUND_THRESHOLD = 0.05
_MARGIN = 2


# ----------------------------------------------------------------------------- listing


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _scan_folder(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        root_p = Path(root)
        files = sorted(f for f in files if not _hidden(f))
        nifti = [root_p / f for f in files if is_nifti_path(f)]
        found.extend(nifti)
        others = [root_p / f for f in files if not is_nifti_path(f)]
        if any(is_dicom_file(p) for p in others):
            found.append(root_p)
            dirs[:] = []  # load_dicom reads the series' subfolders itself
    return sorted(found)


def _read_list(list_file: Path) -> list[str]:
    suffix = list_file.suffix.lower()
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(list_file, f"cannot read the list file ({exc})") from None
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if reader.fieldnames is None or "image" not in [f.strip() for f in reader.fieldnames]:
            raise InputError(list_file, f"CSV needs a column 'image'; found {reader.fieldnames}")
        entries = []
        for row_no, row in enumerate(reader, start=2):
            row = {(k or "").strip(): v for k, v in row.items()}
            value = (row.get("image") or "").strip()
            if not value:
                raise InputError(list_file, f"row {row_no}: empty 'image' entry")
            entries.append(value)
        return entries
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(list_file, f"invalid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(items, list):
        raise InputError(list_file, 'JSON must be a list of paths or of {"image": path} objects')
    entries = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            item = item.get("image")
        if not isinstance(item, str) or not item.strip():
            raise InputError(list_file, f'entry {i}: expected a path or {{"image": path}}, got {items[i]!r}')
        entries.append(item.strip())
    return entries


def list_scans(source: str | os.PathLike) -> list[Path]:
    """The scans of a folder or list file (see the module docstring for the rules).

    Args:
        source: a folder, a ``.csv`` (column ``image``) or a ``.json`` list.

    Returns:
        Paths of NIfTI files and DICOM series folders: sorted for a folder, in list order for a list.

    Raises:
        InputError: a missing source, an unsupported source file, a malformed list, a listed
            path that does not exist, or no scans at all.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise InputError(source, "folder or list file not found")
    if source.is_dir():
        scans = _scan_folder(source)
        if not scans:
            raise InputError(source, "no scans found (expected *.nii, *.nii.gz or DICOM series folders)")
        return scans
    if source.suffix.lower() not in (".csv", ".json"):
        raise InputError(source, "expected a folder, a .csv (column 'image') or a .json list of scans")
    scans = []
    for entry in _read_list(source):
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = source.parent / path
        if not path.exists():
            raise InputError(path, f"listed in {source} but not found")
        scans.append(path)
    if not scans:
        raise InputError(source, "the list is empty")
    return scans


# ----------------------------------------------------------------------------- loading


class _LoadVolumed(MapTransform):
    """Path -> :class:`Volume` with ldp-med's readers (NIfTI / DICOM), which fail with InputError.

    Training images are resampled to the model grid, so a thin stack is usable: no size floor, but a
    constant image (nothing to learn, no intensity range) is still refused.
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_volume(d[key], min_size=1)
        return d


class _PlainTensord(MapTransform):
    """MetaTensor -> plain contiguous float32 tensor (small, loads with ``weights_only=True``)."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            d[key] = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float().contiguous()
        return d


def _stamp(path: Path) -> str:
    """Size and modification time of a file, or of every file of a DICOM series folder."""
    if path.is_dir():
        h = hashlib.sha1()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def folder_cache_dir(cache_dir: str | os.PathLike, model_cfg) -> Path:
    """``cache_dir/folder-<hash>``: the cache folder of ``load_folder`` for ``model_cfg``'s grid settings."""
    settings = {
        "grid": [int(n) for n in model_cfg.grid],
        "voxel_mm": float(model_cfg.voxel_mm),
        "crop_foreground": True,
        "upper_percentile": DEFAULT_UPPER_PERCENTILE,
        "foreground_threshold": _FOREGROUND_THRESHOLD,
        "margin": _MARGIN,
        "monai": monai.__version__,
        "version": _CACHE_VERSION,
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"folder-{digest}"


def _as_input_error(exc: BaseException, path: Path) -> LdpError:
    """The LdpError inside MONAI's wrapping (``apply_transform`` re-raises as RuntimeError), or a new one."""
    seen = exc
    while seen is not None:
        if isinstance(seen, LdpError):
            return seen
        seen = seen.__cause__ or seen.__context__
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    return InputError(path, f"cannot move to the model grid ({type(root).__name__}: {root})")


def load_folder(
    source: str | os.PathLike, model_cfg, cache_dir: str | os.PathLike, progress: bool = True
) -> np.ndarray:
    """Every scan of ``source`` on the model grid, for training (cached: a second call re-reads nothing).

    Args:
        source: a folder, ``.csv`` or ``.json`` list (see :func:`list_scans`).
        model_cfg: a ``ModelConfig`` (its ``grid`` and ``voxel_mm``).
        cache_dir: cache root; the scans are cached under :func:`folder_cache_dir`.
        progress: show a tqdm bar.

    Returns:
        float32 array (N, *grid) in [0, 1]: each scan in RAS orientation at ``voxel_mm``, scaled
        (min -> 0, 99.5th percentile -> 1, clipped), cropped to its foreground and centred.

    Raises:
        InputError: from :func:`list_scans`, or naming the scan that cannot be read or transformed.
    """
    from tqdm import tqdm

    scans = list_scans(source)
    grid = tuple(int(n) for n in model_cfg.grid)
    transform = Compose(
        [
            _LoadVolumed(keys="image"),
            ToModelSpaced(
                keys="image",
                grid=grid,
                voxel_mm=model_cfg.voxel_mm,
                crop_foreground=True,
                upper_percentile=DEFAULT_UPPER_PERCENTILE,
                foreground_threshold=_FOREGROUND_THRESHOLD,
                margin=_MARGIN,
            ),
            _PlainTensord(keys="image"),
        ]
    )
    cache = folder_cache_dir(cache_dir, model_cfg)
    cache.mkdir(parents=True, exist_ok=True)
    items = [{"image": str(p), "stamp": _stamp(p)} for p in scans]
    ds = PersistentDataset(data=items, transform=transform, cache_dir=cache)
    out = np.empty((len(items), *grid), dtype=np.float32)
    for i in tqdm(range(len(items)), disable=not progress, desc="scans -> model grid", unit="scan"):
        try:
            x = ds[i]["image"]
        except Exception as exc:  # MONAI wraps every transform error in RuntimeError
            err = _as_input_error(exc, scans[i])
            if err.__traceback__ is not None:  # ours, raised inside MONAI: drop the wrapper
                raise err from None
            raise err from exc
        out[i] = np.asarray(x, dtype=np.float32).reshape(grid)
    return out
