"""The generated bad-input corpus: every case is one (kind, field, value) applied to a valid base input.

Kinds: ``nifti`` (.nii) and ``nifti_gz`` (.nii.gz) header fields and contents, ``gzip`` (truncated or
corrupted compressed streams), ``mgz`` (FreeSurfer MGZ header fields, contents and truncations), ``minc`` (MINC1
``.mnc.gz`` geometry, scaling, dimensions, truncations and a compressed MINC2), ``dicom`` (series folders with bad
geometry, sizes, rescaling, transfer syntaxes, and pydicom's own broken test files), ``kspace`` (HDF5 containers
with wrong datasets and attributes) and ``model`` (model folders: config, weights, pickles). :func:`build` writes one
case under a folder and returns the command line that must reject it with exit code 2 and one line naming the file.

Valid base inputs are built once per process (:func:`bases`) and each case only patches a copy.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import pickle
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

GRID = (9, 12, 10)
NAN, INF = float("nan"), float("inf")


@dataclass(frozen=True)
class Case:
    """One bad input: ``value`` written into ``field`` of a valid input of ``kind``."""

    kind: str
    field: str
    value: object

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.field}-{self.value!r}"


@dataclass(frozen=True)
class Invocation:
    """What to run: the bad input (file or folder), the CLI arguments, the output folder that must stay empty."""

    bad: Path
    args: tuple[str, ...]
    out_dir: Path


# --------------------------------------------------------------------------------------------- values

NIFTI_FIELDS: dict[str, list] = {
    "dim0": [0, -1, 1, 2, 8, 9, 32767],
    "dim1": [0, -1, -32768, 1, 2, 6, 4000, 32767],
    "dim2": [0, -1, 1, 3, 5000, 32767],
    "dim3": [0, -2, 1, 4, 4000, 32767],
    "dim123": [4000, 1000, 32767],
    "dim4": [0, 2, 1000, -1],
    "dim5": [2, 3],
    "pixdim1": [0.0, NAN, INF, -INF, 1e-30],
    "pixdim2": [0.0, NAN, INF],
    "pixdim3": [0.0, NAN, -INF, 1e-30],
    "datatype": [0, 1, 3, 5, 8, 16, 32, 64, 128, 255, 768, 999, 1024, 1280, 1536, 1792, 2048, 2304],
    "vox_offset": [0.0, 100.0, 351.0, -1.0, NAN, INF, 1e6, 1e9, 2.0**31, 352.5],
    "scl_slope": [INF, -INF, 1e38, -1e38],
    "scl_inter": [NAN, INF, -INF, 1e38],
    "qform_code": [-1, 6, 99, 32767, -32768],
    "sform_code": [-1, 7, 99, 32767, -32768],
    "sform": ["zeros", "nan", "inf", "rank2"],
    "quatern_b": [NAN, INF],
    "qoffset_x": [NAN, INF, -INF],
    "sizeof_hdr": [0, 1, 347, 540, 65535],
    "magic": [b"xxxx", b"ni1\0", b"n+2\0", b"\0\0\0\0"],
    "content": ["nan_voxel", "inf_voxel", "all_nan", "zeros", "constant", "2x2x2", "one_slice", "7x7x1", "2d",
                "1d", "complex64", "rgb", "4d_no_index", "empty_axis", "int_constant"],
    "file": ["empty", "text", "random_bytes", "html", "header_only", "short_header", "nul_bytes"],
    "truncate": [1, 10, 100, 348, 351, 360, 0.25, 0.5, 0.75, -1],
}

GZIP_FIELDS: dict[str, list] = {
    "truncate": [1, 2, 5, 10, 18, 50, 100, 200, 0.1, 0.3, 0.5, 0.7, 0.9, -1, -2, -4, -5, -8, -9],
    "flip_byte": [10, 11, 20, 40, 0.2, 0.4, 0.6, 0.8, -1, -3, -5, -7],
    "gzip_of": ["text", "empty", "nifti_header_only", "double_gzip"],
}

MGH_FIELDS: dict[str, list] = {
    "version": [0, 2, -1, 16777216],
    "dims": [0, -1, 4000, 2**30],
    "frames": [0, 2, -1],
    "type": [2, 5, 9, 99, -1],
    "delta": [0.0, NAN, INF, -1.0],
    "Mdc": ["nan", "inf", "zeros", "rank2"],
    "Pxyz_c": [NAN, INF],
    "content": ["nan_voxel", "zeros", "2x2x2", "one_slice"],
    "file": ["empty", "text", "random_bytes", "header_only", "short_header"],
    "truncate": [1, 100, 283, 300, 0.5, 0.99],
}

MINC_FIELDS: dict[str, list] = {
    "step": [0.0, NAN, INF],
    "start": [NAN, INF],
    "direction_cosines": ["nan", "zeros", "parallel"],
    "image-max": [NAN, INF],
    "valid_range": ["equal", "nan"],
    "dims": ["two_times", "vector", "two_spatial", "irregular"],
    "content": ["zeros", "2x2x2", "four_d"],
    "file": ["empty", "text", "random_bytes", "minc2_gz", "netcdf_without_image"],
    "truncate": [3, 100, 0.5, 0.99],
}

DICOM_FIELDS: dict[str, list] = {
    "ImagePositionPatient": ["missing_one", "missing_all", "nan", "two_values", "text", "duplicate", "gap",
                             "empty", "inf", "all_same"],
    "ImageOrientationPatient": ["missing_one", "zeros", "not_orthonormal", "differs", "five_values", "nan", "text",
                                "parallel", "empty"],
    "PixelSpacing": ["missing", "zero", "negative", "differs", "one_value", "nan", "text", "inf"],
    "size": ["rows_mixed", "cols_mixed", "rows_exceed_data", "rows_zero", "one_slice", "two_slices"],
    "SeriesInstanceUID": ["two_series", "three_series"],
    "RescaleSlope": ["nan", "inf", "text", "1e308"],
    "RescaleIntercept": ["nan", "inf", "text", "1e308"],
    "SamplesPerPixel": [3, 0],
    "BitsAllocated": [0, 7, 12, 64],
    "PixelData": ["truncated", "empty", "missing_all", "odd_length"],
    "TransferSyntaxUID": ["jpeg_baseline", "jpeg2000", "jpeg_ls", "rle", "deflate", "unknown"],
    "testdata": ["JPEG2000.dcm", "JPEG-lossy.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "MR_truncated.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                 "J2K_pixelrep_mismatch.dcm", "JPEGLSNearLossless_08.dcm", "693_J2KI.dcm", "rtdose.dcm",
                 "GDCMJ2K_TextGBR.dcm", "JPGExtended.dcm", "no_meta.dcm", "MR_small.dcm", "CT_small.dcm"],
    "file": ["empty_folder", "text_only", "marker_then_garbage", "truncated_half", "no_pixel_data"],
}

KSPACE_FIELDS: dict[str, list] = {
    "kspace": ["float32", "float64", "int16", "trailing_2", "strings", "bool", "3d", "5d", "empty_axis", "scalar",
               "nan", "inf", "missing", "group", "all_zero", "too_small"],
    "mask": ["all_zero", "fractional", "twos", "wrong_shape", "4d", "float_01", "int32", "complex", "missing",
             "nan", "negative", "strings"],
    "sensitivity_maps": ["wrong_shape", "real", "nan", "inf", "strings", "all_zero"],
    "reference": ["wrong_shape", "complex", "nan", "strings", "inf"],
    "affine": ["3x3", "nan", "singular", "strings", "complex", "inf", "vector"],
    "acceleration": ["fast", -1.0, NAN, 0.0, "array"],
    "noise_std": [-1.0, "x", NAN, INF, "array"],
    "scale": [0.0, -1.0, "x", NAN, INF],
    "seed": ["abc", "array", 1.5],
    "calib": [-3, 500, "x", NAN, 0.5],
    "file": ["text", "empty", "truncated_half", "truncated_head", "no_datasets", "random_bytes"],
}

MODEL_FIELDS: dict[str, list] = {
    "config.json": ["not_json", "truncated", "list", "empty", "unknown_key", "wrong_type", "missing", "binary",
                    "nan_voxel", "null", "negative_grid", "inf_scale"],
    "vae.safetensors": ["truncated_8", "truncated_half", "truncated_tail", "garbage", "empty", "huge_header",
                        "shape_mismatch", "nan_weights", "missing", "missing_tensor"],
    "extras.safetensors": ["truncated_half", "garbage"],
    "pickle": [(name, magic) for name in ("vae.safetensors", "model.txt", "weights.dat", "README", "x.pt")
               for magic in ("proto2", "proto4", "proto5", "torch_zip")],
}

KINDS = {"nifti": NIFTI_FIELDS, "nifti_gz": NIFTI_FIELDS, "gzip": GZIP_FIELDS, "mgz": MGH_FIELDS,
         "minc": MINC_FIELDS, "dicom": DICOM_FIELDS, "kspace": KSPACE_FIELDS, "model": MODEL_FIELDS}


def all_cases() -> list[Case]:
    """Every distinct (kind, field, value), in a fixed order."""
    return [Case(kind, f, v) for kind, fields in KINDS.items() for f, values in fields.items() for v in values]


def _interleaved(kind: str) -> list[Case]:
    """The cases of ``kind``, one value of each field in turn (values taken from the middle outwards)."""
    fields = KINDS[kind]
    order = []
    for depth in range(max(len(v) for v in fields.values())):
        for field, values in fields.items():
            if depth < len(values):
                order.append(Case(kind, field, values[(len(values) // 2 + depth * 3) % len(values)]))
    return list(dict.fromkeys(order))


def ci_sample(n: int = 50) -> list[Case]:
    """A fixed, representative ``n``: kinds in turn, and within a kind its fields in turn."""
    queues = [_interleaved(kind) for kind in KINDS]
    picked: list[Case] = []
    while len(picked) < n:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


# ---------------------------------------------------------------------------------------- base inputs

def phantom(shape=GRID) -> np.ndarray:
    """A smooth blob with structure (int16 scanner-like units), shape ``shape``."""
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    return (400 * np.exp(-2 * r2) + 50 * (grids[0] > 0.2) + 10).astype(np.int16)


def _nifti_header(shape=GRID, dtype=np.int16) -> nib.Nifti1Header:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    aff = np.diag([1.2, 1.0, 1.5, 1.0])
    aff[:3, 3] = [-5.0, -6.0, -7.0]
    hdr.set_qform(aff, code=1)
    hdr.set_sform(aff, code=1)
    hdr["vox_offset"] = 352
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    return hdr


def nifti_bytes(hdr: nib.Nifti1Header, data: np.ndarray) -> bytes:
    """A single-file NIfTI-1: header, empty extension flag, then the data in Fortran order."""
    return hdr.binaryblock + b"\0" * 4 + np.asarray(data).tobytes(order="F")


@functools.lru_cache(maxsize=None)
def bases(root: str) -> dict[str, Path]:
    """Valid inputs, written once under ``root``: NIfTI, DICOM series, k-space container, model folder."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    good = base / "good.nii.gz"
    good.write_bytes(gzip.compress(nifti_bytes(_nifti_header(), phantom())))
    (base / "good.mgz").write_bytes(gzip.compress(mgh_bytes(phantom())))
    (base / "good.mnc.gz").write_bytes(gzip.compress(_minc_case_bytes("", None)))
    paths = {"nifti": good, "mgz": base / "good.mgz", "minc": base / "good.mnc.gz", "dicom": _write_series(base / "series", [{}] * 8),
             "kspace": _good_kspace(base / "good.h5", good), "model": _tiny_model(base / "model")}
    return paths


def _good_kspace(path: Path, good: Path) -> Path:
    from ldp_med.config import SimulateConfig
    from ldp_med.io import load_volume, save_output
    from ldp_med.physics.simulate import simulate

    cfg = SimulateConfig(task="kspace", accel=2, mask="random-lines", calib=4, coils=2, noise=0.01, seed=0)
    save_output(simulate(load_volume(good), cfg), path)
    return path


def _tiny_model(folder: Path) -> Path:
    import torch

    from ldp_med.models.builders import build_models
    from ldp_med.models.pretrained import save_pretrained
    from tests.conftest import TINY_MODEL

    torch.manual_seed(0)
    vae, unet = build_models(TINY_MODEL)
    return save_pretrained(folder, TINY_MODEL, vae, unet, extras={"emb": torch.ones(2, 3)})


# -------------------------------------------------------------------------------------------- NIfTI

def _patch_nifti(field: str, value) -> bytes:
    """The raw bytes of a .nii with ``field`` set to ``value`` (nibabel's checks bypassed)."""
    if field == "content":
        return _nifti_content(value)
    if field == "file":
        return _nifti_file(value)
    hdr, data = _nifti_header(), phantom()
    raw = hdr.structarr
    if field.startswith("dim"):
        if field == "dim123":
            raw["dim"][1:4] = value
        elif field == "dim4":
            raw["dim"][0], raw["dim"][4] = 4, value
        elif field == "dim5":
            raw["dim"][0], raw["dim"][5] = 5, value
        else:
            raw["dim"][int(field[3])] = value
    elif field.startswith("pixdim"):
        raw["qform_code"], raw["sform_code"] = 0, 0
        raw["pixdim"][int(field[6])] = value
    elif field == "sform":
        rows = {"zeros": np.zeros((3, 4)), "nan": np.full((3, 4), NAN), "inf": np.full((3, 4), INF),
                "rank2": np.array([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1.0, 0]])}[value]
        raw["srow_x"], raw["srow_y"], raw["srow_z"] = rows
    elif field in ("quatern_b", "qoffset_x"):
        raw["sform_code"] = 0
        raw[field] = value
    elif field == "truncate":
        full = nifti_bytes(hdr, data)
        return _cut(full, value)
    else:
        raw[field] = value
    return nifti_bytes(hdr, data)


def _cut(raw: bytes, where) -> bytes:
    """``raw`` truncated at byte ``where`` (int; negative from the end) or at a fraction of its length."""
    n = int(len(raw) * where) if isinstance(where, float) else where
    return raw[:n]


def _nifti_content(value: str) -> bytes:
    data = phantom().astype(np.float32)
    shape, dtype = GRID, np.float32
    if value in ("nan_voxel", "inf_voxel"):
        data[3, 4, 5] = NAN if value == "nan_voxel" else INF
    elif value == "all_nan":
        data[:] = NAN
    elif value in ("zeros", "constant", "int_constant"):
        data = np.full(GRID, 0.0 if value == "zeros" else 7.0, np.float32)
        if value == "int_constant":
            data, dtype = data.astype(np.int16), np.int16
    elif value in ("2x2x2", "one_slice", "7x7x1", "2d", "1d", "empty_axis"):
        data = {"2x2x2": data[:2, :2, :2], "one_slice": data[:, :, :1], "7x7x1": data[:7, :7, :1],
                "2d": data[:, :, 0], "1d": data[:, 0, 0], "empty_axis": data[:, :0, :]}[value]
        shape = data.shape
    elif value == "complex64":
        data, dtype = data.astype(np.complex64) * 1j, np.complex64
    elif value == "rgb":
        rgb = np.zeros(GRID, [("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"] = 100
        data, dtype = rgb, rgb.dtype
    elif value == "4d_no_index":
        data = np.stack([data, data], -1)
        shape = data.shape
    hdr = _nifti_header(shape, dtype)
    return nifti_bytes(hdr, data)


def _nifti_file(value: str) -> bytes:
    rng = np.random.default_rng(len(value))
    return {
        "empty": b"",
        "text": b"this is not a NIfTI file\n" * 20,
        "random_bytes": rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "html": b"<html><body>404 Not Found</body></html>\n",
        "header_only": nifti_bytes(_nifti_header(), np.zeros(0, np.int16)),
        "short_header": _nifti_header().binaryblock[:200],
        "nul_bytes": b"\0" * 2000,
    }[value]


def _write_nifti_case(case: Case, folder: Path) -> Path:
    raw = _patch_nifti(case.field, case.value)
    if case.kind == "nifti":
        path = folder / "bad.nii"
        path.write_bytes(raw)
    else:
        path = folder / "bad.nii.gz"
        path.write_bytes(gzip.compress(raw, mtime=0) if case.field != "truncate" else _cut(
            gzip.compress(_patch_nifti("dim0", 3), mtime=0), case.value))
    return path


# ---------------------------------------------------------------------------------------------- MGH

_MGH_HEADER = nib.freesurfer.mghformat.MGHHeader._hdrdtype  # the 284 bytes before the data


def mgh_bytes(data: np.ndarray) -> bytes:
    """An uncompressed MGH file of ``data`` (header, data, footer), oblique 1.2 x 1.0 x 1.5 mm voxels."""
    aff = np.diag([1.2, 1.0, 1.5, 1.0])
    aff[:3, 3] = [-5.0, -6.0, -7.0]
    buffer = io.BytesIO()
    nib.MGHImage(data, aff).to_file_map({"image": nib.FileHolder(fileobj=buffer)})
    return buffer.getvalue()


def _patch_mgh(field: str, value) -> bytes:
    """The bytes of an .mgh with ``field`` set to ``value`` (before compression)."""
    if field == "file":
        header = mgh_bytes(phantom())[:_MGH_HEADER.itemsize]
        return {"empty": b"", "text": b"this is not an MGH file\n" * 20,
                "random_bytes": np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
                "header_only": header, "short_header": header[:100]}[value]
    if field == "content":
        data = phantom().astype(np.float32)
        if value == "nan_voxel":
            data[3, 4, 5] = NAN
        elif value == "zeros":
            data[:] = 0
        elif value in ("2x2x2", "one_slice"):
            data = data[:2, :2, :2] if value == "2x2x2" else data[:, :, :1]
        return mgh_bytes(data)
    raw = bytearray(mgh_bytes(phantom()))
    if field == "truncate":
        end = _MGH_HEADER.itemsize + phantom().nbytes  # header + data: the footer after it is optional
        return bytes(raw[:int(end * value) if isinstance(value, float) else value])
    hdr = np.frombuffer(raw, _MGH_HEADER, count=1).copy()
    if field == "dims":
        hdr["dims"][0][1] = value
    elif field == "frames":
        hdr["dims"][0][3] = value
    elif field == "delta":
        hdr["delta"][0][1] = value
    elif field == "Mdc":
        hdr["Mdc"][0] = {"nan": np.full((3, 3), NAN), "inf": np.full((3, 3), INF), "zeros": np.zeros((3, 3)),
                         "rank2": np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])}[value]
    elif field == "Pxyz_c":
        hdr["Pxyz_c"][0][2] = value
    else:
        hdr[field] = value
    raw[:_MGH_HEADER.itemsize] = hdr.tobytes()
    return bytes(raw)


def _write_mgh_case(case: Case, folder: Path) -> Path:
    path = folder / "bad.mgz"
    path.write_bytes(gzip.compress(_patch_mgh(case.field, case.value), mtime=0))
    return path


# MINC1 (netCDF): the geometry of tests/io/test_minc.py's files (exact oblique cosines, a negative step)
_MINC_ROT = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]]) @ \
    np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])
MINC_COSINES = {"xspace": _MINC_ROT[:, 0], "yspace": _MINC_ROT[:, 1], "zspace": _MINC_ROT[:, 2]}
MINC_STEPS = {"xspace": 1.5, "yspace": -2.0, "zspace": 2.5, "time": 1.0, "time2": 1.0, "vector_dimension": 1.0}
MINC_STARTS = {"xspace": -30.0, "yspace": 40.0, "zspace": -12.5, "time": 0.0, "time2": 0.0, "vector_dimension": 0.0}


def minc1_bytes(stored: np.ndarray, names: tuple[str, ...], lo, hi, attrs: dict | None = None,
                valid_range=(0.0, 255.0), spacing: bytes = b"regular__") -> bytes:
    """A MINC1 file: unsigned bytes ``stored`` with dimensions ``names`` (file order), per-slice real range ``lo`` ..
    ``hi`` along the first dimension, :data:`MINC_STEPS` / :data:`MINC_STARTS` / :data:`MINC_COSINES` (``attrs``:
    ``{(dimension, attribute): value}`` replaces one)."""
    import tempfile

    from nibabel.externals.netcdf import netcdf_file

    attrs = attrs or {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.mnc"
        f = netcdf_file(str(path), "w")
        for name, size in zip(names, stored.shape):
            f.createDimension(name, size)
            var = f.createVariable(name, "d", ())
            var.step, var.start, var.spacing = MINC_STEPS[name], MINC_STARTS[name], spacing
            if name in MINC_COSINES:
                var.direction_cosines = MINC_COSINES[name]
            for (dim, key), value in attrs.items():
                if dim == name:
                    setattr(var, key, value)
        image = f.createVariable("image", "b", names)
        image[:] = stored.view(np.int8)
        image.signtype, image.valid_range = b"unsigned", np.asarray(valid_range, np.float64)
        for key, values in (("image-min", lo), ("image-max", hi)):
            var = f.createVariable(key, "d", names[:1])
            var[:] = values
        f.close()
        return path.read_bytes()


#: The valid MINC base on the NIfTI base's grid (1.2 x 1.0 x 1.5 mm from (-5, -6, -7)), so that `evaluate` compares
#: them voxel for voxel in the positive control.
_MINC_BASE = {**{(n, "step"): v for n, v in zip(("xspace", "yspace", "zspace"), (1.2, 1.0, 1.5))},
              **{(n, "start"): v for n, v in zip(("xspace", "yspace", "zspace"), (-5.0, -6.0, -7.0))},
              **{(n, "direction_cosines"): np.eye(3)[i] for i, n in enumerate(("xspace", "yspace", "zspace"))}}


def _minc_case_bytes(field: str, value) -> bytes:
    """The bytes of a MINC1 file (before compression) with ``field`` set to ``value``; the valid base for any other
    field."""
    data = (phantom() * 200 + 20).astype(np.uint8)
    names = ("xspace", "yspace", "zspace")
    lo, hi = np.zeros(data.shape[0]), np.full(data.shape[0], 255.0)

    def minc(stored, dims=names, low=lo, high=hi, **kw):
        return minc1_bytes(np.ascontiguousarray(stored), dims, low, high, {**_MINC_BASE, **kw.pop("attrs", {})}, **kw)

    if field == "file":
        return {"empty": b"", "text": b"this is not a MINC file\n" * 20,
                "random_bytes": np.random.default_rng(5).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
                "netcdf_without_image": b"CDF\x01" + b"\0" * 28}.get(value, b"")
    if field == "truncate":
        raw = minc(data)
        return raw[:int(len(raw) * value) if isinstance(value, float) else value]
    if field in ("step", "start"):
        return minc(data, attrs={("yspace", field): value})
    if field == "direction_cosines":
        cos = {"nan": np.full(3, NAN), "zeros": np.zeros(3), "parallel": np.eye(3)[0]}[value]
        return minc(data, attrs={("yspace", "direction_cosines"): cos})
    if field == "image-max":
        return minc(data, high=np.full_like(hi, value))
    if field == "valid_range":
        return minc(data, valid_range=(7.0, 7.0) if value == "equal" else (NAN, 255.0))
    if field == "dims":
        if value == "irregular":
            return minc(data, spacing=b"irregular")
        if value == "vector":
            return minc(np.moveaxis(np.broadcast_to(data, (3,) + data.shape), 0, -1), names + ("vector_dimension",))
        if value == "two_times":
            return minc(np.broadcast_to(data, (2, 2) + data.shape), ("time", "time2") + names, np.zeros(2),
                        np.full(2, 255.0))
        return minc(data[0], names[1:], np.zeros(data.shape[1]), np.full(data.shape[1], 255.0))
    if value == "four_d":
        return minc(np.stack([data, data]), ("time",) + names, np.zeros(2), np.full(2, 255.0))
    if field != "content":  # the valid base
        return minc(data)
    small = np.zeros_like(data) if value == "zeros" else data[:2, :2, :2]
    return minc(small, names, lo[:small.shape[0]], hi[:small.shape[0]])


def _write_minc_case(case: Case, folder: Path) -> Path:
    path = folder / "bad.mnc.gz"
    if case.field == "file" and case.value == "minc2_gz":
        content = (Path(nib.__file__).parent / "tests" / "data" / "small.mnc").read_bytes()
    else:
        content = _minc_case_bytes(case.field, case.value)
    path.write_bytes(gzip.compress(content, mtime=0))
    return path


def _write_gzip_case(case: Case, folder: Path) -> Path:
    good = gzip.compress(nifti_bytes(_nifti_header(), phantom()), mtime=0)
    path = folder / "bad.nii.gz"
    if case.field == "truncate":
        path.write_bytes(_cut(good, case.value))
    elif case.field == "flip_byte":
        v = case.value
        i = int(len(good) * v) if isinstance(v, float) else (v if v >= 0 else len(good) + v)
        raw = bytearray(good)
        raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    else:
        inner = {"text": b"hello, not a NIfTI\n" * 10, "empty": b"",
                 "nifti_header_only": _nifti_header().binaryblock + b"\0" * 4,
                 "double_gzip": good}[case.value]
        path.write_bytes(gzip.compress(inner, mtime=0))
    return path


# -------------------------------------------------------------------------------------------- DICOM

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_SYNTAXES = {"jpeg_baseline": "1.2.840.10008.1.2.4.50", "jpeg2000": "1.2.840.10008.1.2.4.90",
             "jpeg_ls": "1.2.840.10008.1.2.4.80", "rle": "1.2.840.10008.1.2.5", "deflate": "1.2.840.10008.1.2.1.99",
             "unknown": "1.2.3.4.5.6.7.8.9"}


def _slice_dataset(k: int, series_uid: str, rows: int = 12, cols: int = 9, **tags):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_STORAGE
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{k + 1}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MR_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", series_uid, "fuzz"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = ["-20.0", "-30.0", f"{2.5 * k:.1f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["0.9", "1.1"]
    ds.SliceThickness = "2.5"
    ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-10"
    pixels = (100 * k + 7 * np.arange(rows)[:, None] + np.arange(cols)[None, :] + 1).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    for key, v in tags.items():
        if v is _DELETE:
            if key in ds:
                delattr(ds, key)
        elif key == "TransferSyntaxUID":
            ds.file_meta.TransferSyntaxUID = v
        else:
            setattr(ds, key, v)
    return ds


_DELETE = object()


def _write_series(folder: Path, per_slice: list[dict], series_uid: str = "1.2.826.0.1.3680043.8.498.100") -> Path:
    """One file per slice; ``per_slice[k]`` overrides tags of slice k (``_DELETE`` removes one)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    for k, tags in enumerate(per_slice):
        tags = dict(tags)
        uid = tags.pop("_series", series_uid)
        patch = tags.pop("_patch", None)
        ds = _slice_dataset(k, uid, **tags)
        syntax = ds.file_meta.TransferSyntaxUID
        path = folder / f"s{k:03d}.dcm"
        if syntax == "1.2.840.10008.1.2.1":
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        else:
            _write_raw_syntax(path, ds, syntax)
        if patch:
            raw = path.read_bytes()
            assert patch[0] in raw, patch
            path.write_bytes(raw.replace(patch[0], patch[1]))
    return folder


def _write_raw_syntax(path: Path, ds, syntax: str) -> None:
    """Claim ``syntax`` in the file meta while the body stays explicit little endian, pixels unencapsulated."""
    import copy

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = syntax
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    body_ds = copy.deepcopy(ds)
    del body_ds.file_meta
    write_dataset(body, body_ds)
    path.write_bytes(head.getvalue() + body.getvalue())


#: Values pydicom refuses to store are written as a same-length number, then patched in the file's bytes.
_TEXT = {"ImagePositionPatient": (["11.5", "22.5", "33.5"], b"11.5\\22.5\\33.5", b"ab.c\\de.f\\gh.i"),
         "ImageOrientationPatient": (["1.000", "0.000", "0.000", "0.000", "1.000", "0.000"],
                                     b"1.000\\0.000\\0.000\\0.000\\1.000\\0.000", b"x.yyy\\" * 5 + b"x.yyy"),
         "PixelSpacing": (["0.75", "1.25"], b"0.75\\1.25", b"ab.c\\de.f"),
         "RescaleSlope": ("3.25", b"3.25", b"text"), "RescaleIntercept": ("-4.5", b"-4.5", b"abcd")}


def _dicom_overrides(field: str, value) -> list[dict]:
    n = 8
    s = [{} for _ in range(n)]
    d = _DELETE
    if value == "text":
        stored, old, new = _TEXT[field]
        s[3] = {field: stored, "_patch": (old, new)}
        return s
    if field == "ImagePositionPatient":
        one = {"missing_one": d, "nan": ["nan", "0", "0"], "two_values": ["0", "0"], "text": ["a", "b", "c"],
               "empty": "", "inf": ["inf", "0", "0"]}
        if value in one:
            s[3] = {field: one[value]}
        elif value == "missing_all":
            s = [{field: d} for _ in range(n)]
        elif value == "duplicate":
            s[4] = {field: ["-20.0", "-30.0", "7.5"]}
        elif value == "gap":
            s[5] = {field: ["-20.0", "-30.0", "14.0"]}
        elif value == "all_same":
            s = [{field: ["0", "0", "0"]} for _ in range(n)]
    elif field == "ImageOrientationPatient":
        values = {"missing_one": d, "zeros": ["0"] * 6, "not_orthonormal": ["1", "0", "0", "0.5", "1", "0"],
                  "differs": ["0", "1", "0", "1", "0", "0"], "five_values": ["1", "0", "0", "0", "1"],
                  "nan": ["nan", "0", "0", "0", "1", "0"], "text": ["x"] * 6, "parallel": ["1", "0", "0", "1", "0", "0"],
                  "empty": ""}
        if value in ("missing_one", "differs"):
            s[2] = {field: values[value]}
        else:
            s = [{field: values[value]} for _ in range(n)]
    elif field == "PixelSpacing":
        values = {"missing": d, "zero": ["0", "0"], "negative": ["-0.9", "1.1"], "one_value": ["0.9"],
                  "nan": ["nan", "1"], "text": ["a", "b"], "inf": ["inf", "1"], "differs": ["0.5", "0.5"]}
        if value == "differs":
            s[6] = {field: values[value]}
        else:
            s = [{field: values[value]} for _ in range(n)]
    elif field == "size":
        if value == "rows_mixed":
            s[2] = {"rows": 14}
        elif value == "cols_mixed":
            s[2] = {"cols": 8}
        elif value == "rows_exceed_data":
            s = [{"Rows": 400} for _ in range(n)]
        elif value == "rows_zero":
            s = [{"Rows": 0} for _ in range(n)]
        else:
            s = s[: 1 if value == "one_slice" else 2]
    elif field == "SeriesInstanceUID":
        for k in range(0, n, 2 if value == "two_series" else 3):
            s[k] = {"_series": f"1.2.826.0.1.3680043.8.498.{200 + k}"}
    elif field in ("RescaleSlope", "RescaleIntercept"):
        s[1] = {field: value}
    elif field in ("SamplesPerPixel", "BitsAllocated"):
        s = [{field: value} for _ in range(n)]
    elif field == "TransferSyntaxUID":
        s = [{field: _SYNTAXES[value]} for _ in range(n)]
    return s


def _write_dicom_case(case: Case, folder: Path) -> Path:
    import warnings

    with warnings.catch_warnings():  # pydicom warns when it is asked to store the invalid values we want
        warnings.simplefilter("ignore")
        return _write_dicom_files(case, folder / "series")


def _write_dicom_files(case: Case, series: Path) -> Path:
    import pydicom
    import pydicom.data

    if case.field == "testdata":
        series.mkdir()
        shutil.copy(Path(pydicom.data.__file__).parent / "test_files" / case.value, series / "image.dcm")
        return series
    if case.field == "PixelData":
        return _dicom_pixel_case(case.value, series)
    if case.field == "file":
        return _dicom_file_case(case.value, series)
    _write_series(series, _dicom_overrides(case.field, case.value))
    return series


def _dicom_pixel_case(value: str, series: Path) -> Path:
    import pydicom

    _write_series(series, [{}] * 8)
    files = sorted(series.iterdir())
    if value == "missing_all":
        for f in files:
            ds = pydicom.dcmread(f)
            del ds.PixelData
            ds.save_as(f)
        return series
    ds = pydicom.dcmread(files[3])
    ds.PixelData = {"truncated": ds.PixelData[:50], "empty": b"", "odd_length": ds.PixelData[:-3]}[value]
    ds.save_as(files[3])
    return series


def _dicom_file_case(value: str, series: Path) -> Path:
    series.mkdir()
    if value == "text_only":
        (series / "notes.txt").write_text("not DICOM\n")
        (series / "scan.dcm").write_text("not DICOM either\n")
    elif value == "marker_then_garbage":
        (series / "a.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    elif value == "truncated_half":
        _write_series(series, [{}] * 8)
        f = sorted(series.iterdir())[0]
        f.write_bytes(f.read_bytes()[:200])
    elif value == "no_pixel_data":
        import pydicom

        _write_series(series, [{}] * 3)
        for f in series.iterdir():
            ds = pydicom.dcmread(f)
            del ds.PixelData
            ds.save_as(f)
    return series


# ------------------------------------------------------------------------------------------- k-space

def _kspace_value(field: str, value, f: h5py.File):
    k = f["kspace"][()]
    grid = k.shape[1:]
    arrays = {
        "kspace": {"float32": k.real.astype(np.float32), "float64": k.real, "int16": np.ones(k.shape, np.int16),
                   "trailing_2": np.stack([k.real, k.imag], -1), "strings": np.array([b"abc", b"def"]),
                   "bool": np.ones(k.shape, bool), "3d": k[0], "5d": k[None], "empty_axis": k[:, :, :0],
                   "scalar": np.complex64(1.0), "nan": _with(k, NAN), "inf": _with(k, INF),
                   "all_zero": np.zeros_like(k)},
        "mask": {"all_zero": np.zeros((1, *grid[1:]), np.uint8), "fractional": np.full((1, *grid[1:]), 0.5),
                 "twos": np.full((1, *grid[1:]), 2, np.uint8), "wrong_shape": np.ones((1, 5, 5), np.uint8),
                 "4d": np.ones((1, 1, *grid[1:]), np.uint8), "float_01": np.ones((1, *grid[1:]), np.float32),
                 "int32": np.ones((1, *grid[1:]), np.int32), "complex": np.ones((1, *grid[1:]), np.complex64),
                 "nan": np.full((1, *grid[1:]), NAN), "negative": np.full((1, *grid[1:]), -1, np.int8),
                 "strings": np.array([b"1", b"0"])},
        "sensitivity_maps": {"wrong_shape": np.ones((2, 3, 3, 3), np.complex64), "real": np.ones(k.shape, np.float32),
                             "nan": _with(np.ones(k.shape, np.complex64), NAN),
                             "inf": _with(np.ones(k.shape, np.complex64), INF), "strings": np.array([b"x"]),
                             "all_zero": np.zeros(k.shape, np.complex64)},
        "reference": {"wrong_shape": np.ones((3, 4, 5), np.float32), "complex": np.ones(grid, np.complex64),
                      "nan": _with(np.ones(grid, np.float32), NAN), "strings": np.array([b"x"]),
                      "inf": _with(np.ones(grid, np.float32), INF)},
        "affine": {"3x3": np.eye(3), "nan": np.full((4, 4), NAN), "singular": np.zeros((4, 4)),
                   "strings": np.array([b"eye"]), "complex": np.eye(4, dtype=np.complex64),
                   "inf": np.diag([INF, 1, 1, 1]), "vector": np.ones(16)},
    }
    return arrays[field][value]


def _with(a: np.ndarray, v: float) -> np.ndarray:
    a = np.array(a)
    a.flat[a.size // 2] = v
    return a


def _write_kspace_case(case: Case, folder: Path, good: Path) -> Path:
    path = folder / "bad.h5"
    raw = good.read_bytes()
    if case.field == "file":
        rng = np.random.default_rng(0)
        path.write_bytes({"text": b"not HDF5\n" * 50, "empty": b"", "truncated_half": raw[: len(raw) // 2],
                          "truncated_head": raw[:600], "random_bytes": rng.integers(0, 256, 5000, np.uint8).tobytes(),
                          "no_datasets": b""}[case.value])
        if case.value == "no_datasets":
            with h5py.File(path, "w") as f:
                f.attrs["task"] = "kspace"
        return path
    path.write_bytes(raw)
    with h5py.File(path, "a") as f:
        if case.value == "too_small":  # a consistent container on a 4x4x4 grid
            small = {"kspace": f["kspace"][:, :4, :4, :4], "mask": np.ones((1, 4, 4), np.uint8)}
            for name in ("kspace", "mask", "sensitivity_maps", "reference"):
                del f[name]
            for name, value in small.items():
                f[name] = value
            f.attrs["calib"] = 2
        elif case.field in ("acceleration", "noise_std", "scale", "seed", "calib"):
            f.attrs[case.field] = np.arange(3.0) if case.value == "array" else case.value
        elif case.value == "missing":
            del f[case.field]
        elif case.value == "group":
            del f[case.field]
            f.create_group(case.field)
        else:
            new = _kspace_value(case.field, case.value, f)
            if case.field in f:
                del f[case.field]
            f[case.field] = new
    return path


# --------------------------------------------------------------------------------------------- model

def _pickle_bytes(magic: str) -> bytes:
    payload = {"state_dict": [1.0, 2.0]}
    if magic == "torch_zip":
        import io

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
            z.writestr("archive/version", "3\n")
        return buf.getvalue()
    return pickle.dumps(payload, protocol=int(magic[-1]))


def _write_model_case(case: Case, folder: Path, good: Path) -> Path:
    model = folder / "model"
    shutil.copytree(good, model)
    field, value = case.field, case.value
    if field == "pickle":
        name, magic = value
        (model / name).write_bytes(_pickle_bytes(magic))
        return model
    target = model / field
    if field == "config.json":
        cfg = json.loads(target.read_text())
        text = {"not_json": "{grid: [24, 32, 24]", "truncated": target.read_text()[:40], "list": "[1, 2, 3]",
                "empty": "", "unknown_key": json.dumps({**cfg, "surprise": 1}),
                "wrong_type": json.dumps({**cfg, "grid": "big"}), "binary": None, "missing": None,
                "nan_voxel": json.dumps({**cfg, "voxel_mm": NAN}), "null": "null",
                "negative_grid": json.dumps({**cfg, "grid": [-24, 32, 24]}),
                "inf_scale": json.dumps({**cfg, "latent_scale_factor": INF})}[value]
        if value == "missing":
            target.unlink()
        elif value == "binary":
            target.write_bytes(b"\xff\xfe\x00garbage\x80")
        else:
            target.write_text(text)
        return model
    raw = target.read_bytes()
    if value == "missing":
        target.unlink()
    elif value in ("shape_mismatch", "nan_weights", "missing_tensor"):
        _rewrite_weights(target, value)
    else:
        header = (10 ** 12).to_bytes(8, "little") + raw[8:]
        target.write_bytes({"truncated_8": raw[:8], "truncated_half": raw[: len(raw) // 2],
                            "truncated_tail": raw[:-16], "garbage": b"\x13\x37" * 500, "empty": b"",
                            "huge_header": header}[value])
    return model


def _rewrite_weights(path: Path, how: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(path)
    name = sorted(k for k, v in state.items() if v.ndim >= 2)[0]
    if how == "shape_mismatch":
        state[name] = torch.zeros(*[s + 1 for s in state[name].shape])
    elif how == "nan_weights":
        state[name] = state[name].clone()
        state[name].view(-1)[0] = NAN
    else:
        del state[name]
    save_file(state, path)


# -------------------------------------------------------------------------------------------- build

#: Commands a bad volume is fed to (``{bad}``, ``{good}``, ``{out}`` are filled in); each is valid for a good one.
VOLUME_COMMANDS = (
    ("simulate", "{bad}", "-o", "{out}/o.h5", "--coils", "2", "--calib", "4", "--accel", "2", "--mask", "random-lines"),
    ("simulate", "{bad}", "-o", "{out}/o.nii.gz", "--task", "denoise"),
    ("reconstruct", "{bad}", "-o", "{out}/o.nii.gz", "--task", "denoise"),
    ("reconstruct", "{bad}", "-o", "{out}/o.nii.gz", "--task", "superres"),
    ("simulate", "{bad}", "-o", "{out}/o.nii.gz", "--task", "superres"),
    ("evaluate", "{bad}", "--reference", "{good}"),
    ("evaluate", "{good}", "--reference", "{bad}"),
    ("autoencode", "{bad}", "-o", "{out}/o.nii.gz", "--model", "{model}"),
)
KSPACE_COMMANDS = (
    ("reconstruct", "{bad}", "-o", "{out}/o.nii.gz", "--method", "zero-filled"),
    ("reconstruct", "{bad}", "-o", "{out}/o.nii.gz", "--method", "cs", "--set", "baseline.cs_iters=2"),
)
REFERENCE_COMMAND = ("evaluate", "{good}", "--reference", "{bad}")
MODEL_COMMAND = ("autoencode", "{good}", "-o", "{out}/o.nii.gz", "--model", "{bad}")


def commands_for(case: Case) -> tuple[tuple[str, ...], ...]:
    """Every command line that must reject ``case``."""
    if case.kind == "model":
        return (MODEL_COMMAND,)
    if case.kind == "kspace":
        return KSPACE_COMMANDS + ((REFERENCE_COMMAND,) if case.field in ("reference", "file") else ())
    return VOLUME_COMMANDS


def build(case: Case, folder: Path, base_root: Path, command: int = 0) -> Invocation:
    """Write ``case`` under ``folder`` and return the ``command``-th command line (modulo) that must reject it."""
    paths = bases(str(base_root))
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    out.mkdir()
    if case.kind in ("nifti", "nifti_gz"):
        bad = _write_nifti_case(case, folder)
    elif case.kind == "gzip":
        bad = _write_gzip_case(case, folder)
    elif case.kind == "mgz":
        bad = _write_mgh_case(case, folder)
    elif case.kind == "minc":
        bad = _write_minc_case(case, folder)
    elif case.kind == "dicom":
        bad = _write_dicom_case(case, folder)
    elif case.kind == "kspace":
        bad = _write_kspace_case(case, folder, paths["kspace"])
    else:
        bad = _write_model_case(case, folder, paths["model"])
    options = commands_for(case)
    template = options[command % len(options)]
    fill = {"bad": str(bad), "good": str(paths["nifti"]), "out": str(out), "model": str(paths["model"])}
    return Invocation(bad, tuple(a.format(**fill) for a in template), out)
