"""Tests of the synthetic healthy cohort (ldp_med.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ldp_med.data import synthetic as S

_CACHE: dict = {}


def subject(seed: int, contrast: str | None = None) -> dict:
    """make_subject, rendered once per (seed, contrast) for the whole module."""
    key = (seed, contrast)
    if key not in _CACHE:
        _CACHE[key] = S.make_subject(seed, contrast=contrast, return_clean=True, return_tissue=True)
    return _CACHE[key]


def test_splits_disjoint_and_bounds():
    tr, va, te = S.seeds("train"), S.seeds("val"), S.seeds("test")
    assert (len(tr), len(va), len(te)) == (10000, 100, 100)
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert S.seeds("val", 3) == [10000, 10001, 10002]
    assert S.split_of(0) == "train" and S.split_of(9999) == "train"
    assert S.split_of(10000) == "val" and S.split_of(10099) == "val"
    assert S.split_of(20000) == "test" and S.split_of(20099) == "test"
    for bad in (-1, 10100, 19999, 20100, 15000):
        with pytest.raises(ValueError):
            S.split_of(bad)
    with pytest.raises(ValueError):
        S.seeds("holdout")
    with pytest.raises(ValueError):
        S.seeds("val", 101)


def test_grid_affine_matches_template():
    from nilearn import datasets

    tpl = datasets.load_mni152_template(resolution=2)
    a_t, a_g = np.asarray(tpl.affine), S.grid_affine()
    assert a_g.shape == (4, 4)
    starts = np.array([(t - g) // 2 for t, g in zip(tpl.shape, S.GRID)])
    for ijk in ([0, 0, 0], [10, 20, 30], [95, 111, 95]):
        g = np.array(ijk + [1.0])
        t = np.concatenate([np.array(ijk) + starts, [1.0]])
        np.testing.assert_allclose(a_g @ g, a_t @ t)
    np.testing.assert_allclose(np.abs(np.diag(a_g)[:3]), S.VOXEL_MM)
    # The data sits where the affine says: a voxel inside both grids holds the same template value.
    vol, aff = S.template_volume()
    np.testing.assert_array_equal(aff, a_g)
    raw = np.asarray(tpl.get_fdata(), dtype=np.float32)
    ijk = np.array([48, 56, 48])
    scale = vol[tuple(ijk)] / raw[tuple(ijk + starts)]
    box = ((40, 60), (50, 60), (40, 60))
    raw_box = raw[tuple(slice(a + s, b + s) for (a, b), s in zip(box, starts))]
    np.testing.assert_allclose(vol[tuple(slice(a, b) for a, b in box)], np.clip(raw_box * scale, 0, 1), rtol=1e-5, atol=1e-6)
    assert vol.dtype == np.float32 and vol.shape == S.GRID and vol.min() >= 0 and vol.max() == 1.0


def test_the_template_maps_come_back_whole_from_their_cache_and_a_broken_cache_is_made_again(tmp_path, monkeypatch):
    monkeypatch.setenv(S.CACHE_ENV, str(tmp_path))
    made = []
    real = S._mni_maps
    monkeypatch.setattr(S, "_mni_maps", lambda *a, **k: made.append(1) or real(*a, **k))
    try:
        S._grid_maps.cache_clear()
        fresh, affine = S._grid_maps()  # from nilearn, then written
        (path,) = tmp_path.iterdir()
        assert path == S._cache_file() and made == [1]
        S._grid_maps.cache_clear()
        cached, cached_affine = S._grid_maps()  # from the file: nilearn not asked again
        assert made == [1] and set(cached) == set(fresh) == {"t1", "gm", "wm", "csf", "mask"}
        assert all(np.array_equal(cached[k], fresh[k]) and cached[k].dtype == np.float32 for k in fresh)
        assert np.array_equal(cached_affine, affine) and not cached["t1"].flags.writeable
        path.write_bytes(path.read_bytes()[:1000])  # truncated (a full disk, a killed writer of an older version)
        S._grid_maps.cache_clear()
        again, _ = S._grid_maps()
        assert made == [1, 1] and np.array_equal(again["t1"], fresh["t1"])
        assert [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten whole, no temporary left
        monkeypatch.setenv(S.CACHE_ENV, "relative/folder")  # not an absolute folder (e.g. no home): no cache at all
        monkeypatch.chdir(tmp_path)
        S._grid_maps.cache_clear()
        assert np.array_equal(S._grid_maps()[0]["t1"], fresh["t1"]) and made == [1, 1, 1]
        assert not (tmp_path / "relative").exists()
    finally:
        S._grid_maps.cache_clear()


def test_subject_shape_dtype_range_and_determinism():
    a = subject(11, "T1w")
    assert a["image"].shape == S.GRID and a["image"].dtype == np.float32
    assert 0.0 <= a["image"].min() and a["image"].max() <= 1.0
    assert a["clean"].shape == S.GRID and a["tissue"].shape == (3,) + S.GRID
    np.testing.assert_array_equal(a["affine"], S.grid_affine())
    assert a["label"] == 0 and a["contrast"] == "T1w" and a["seed"] == 11
    assert isinstance(a["caption"], str) and a["caption"]
    b = S.make_subject(11, contrast="T1w")
    np.testing.assert_array_equal(a["image"], b["image"])
    assert (a["label"], a["caption"]) == (b["label"], b["caption"])
    # Another seed: other anatomy (the tissue maps do not depend on the contrast).
    assert not np.allclose(a["tissue"], subject(13, "T2w")["tissue"])
    # Background (outside every tissue map) is ~0 apart from noise.
    bg = a["tissue"].sum(0) < 1e-3
    assert a["clean"][bg].max() < 0.02 and a["image"][bg].mean() < 0.05


def test_a_head_subject_is_the_same_brain_in_a_skull_and_scalp():
    """head=True wraps the noise-free image in a synthetic skull and scalp before the noise: the brain and every
    draw stay the subject's, the head adds signal outside the brain only."""
    a = subject(11, "T1w")
    b = S.make_subject(11, contrast="T1w", return_clean=True, head=True)
    assert (b["caption"], b["noise_sigma"]) == (a["caption"], a["noise_sigma"])
    brain = a["tissue"].sum(0) > 0.5
    np.testing.assert_array_equal(b["clean"][brain], a["clean"][brain])
    outside = ~brain
    assert (b["clean"][outside] > 0.2).mean() > 10 * (a["clean"][outside] > 0.2).mean()  # skull marrow, scalp
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert np.abs(b["image"] - b["clean"]).mean() > 0  # noisy


def test_sharp_subject_has_the_same_anatomy_and_draws_with_the_template_detail():
    """sharp=True samples the maps from the 1 mm template through the same deformation: the same draws, the
    same placement, more high-frequency energy (one interpolation at 1 mm instead of a linear blur at 2 mm)."""
    from scipy import ndimage

    a = subject(11, "T1w")
    b = S.make_subject(11, contrast="T1w", return_clean=True, return_tissue=True, sharp=True)
    assert (b["caption"], b["noise_sigma"]) == (a["caption"], a["noise_sigma"])
    assert np.corrcoef(a["tissue"].ravel(), b["tissue"].ravel())[0, 1] > 0.97  # the same placement
    brain = a["tissue"].sum(0) > 0.5

    def detail(img):
        return float(np.mean((img - ndimage.gaussian_filter(img, 1.0))[brain] ** 2))

    assert detail(b["clean"]) > 1.1 * detail(a["clean"])  # 1.17 measured
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0


def test_meta_matches_subject_and_unknown_contrast():
    meta = S.subject_meta(11, "T1w")
    a = subject(11, "T1w")
    assert (meta["label"], meta["contrast"], meta["caption"]) == (a["label"], a["contrast"], a["caption"])
    drawn = {S.subject_meta(s)["contrast"] for s in range(40)}
    assert drawn == set(S.CLASSES)
    with pytest.raises(ValueError):
        S.make_subject(1, contrast="DWI")


@pytest.mark.parametrize(
    "contrast, order",
    [("T1w", ("wm", "gm", "csf")), ("T2w", ("csf", "gm", "wm")), ("FLAIR", ("gm", "wm", "csf")), ("PD", ("gm", "wm"))],
)
def test_tissue_contrast_ordering(contrast, order):
    seed = {"T1w": 11, "T2w": 13, "PD": 14, "FLAIR": 15}[contrast]
    s = subject(seed, contrast)
    gm, wm, csf = s["tissue"]
    means = {k: float(s["image"][m > 0.8].mean()) for k, m in (("gm", gm), ("wm", wm), ("csf", csf))}
    for hi, lo in zip(order[:-1], order[1:]):
        assert means[hi] > means[lo], (contrast, means)


def test_captions():
    assert len(S.CAPTION_TEMPLATES) >= 5
    rng = np.random.default_rng(0)
    for c in S.CLASSES:
        caps = {S.caption_for(c, rng) for _ in range(60)}
        assert len(caps) >= 5
        assert all(any(syn in cap for syn in S.CONTRAST_SYNONYMS[c]) for cap in caps)


def test_caption_pool_holds_every_caption_once_with_its_class():
    pool = S.caption_pool()
    assert len({c for _, c in pool}) == len(pool)  # no wording names two classes
    assert len(pool) == len(S.CAPTION_TEMPLATES) * sum(len(v) for v in S.CONTRAST_SYNONYMS.values())
    label_of = {c: lab for lab, c in pool}
    for seed in (0, 1, 2, 3, 20000):
        meta = S.subject_meta(seed)
        assert label_of[meta["caption"]] == meta["label"]


def test_build_cohort_writes_index_and_skips(tmp_path, monkeypatch):
    index = S.build_cohort(tmp_path, [10000], progress=False)
    entries = json.loads(index.read_text())
    assert [e["seed"] for e in entries] == [10000]
    e = entries[0]
    assert e["split"] == "val" and e["file"] == "sub-10000.npz"
    meta = S.subject_meta(10000)
    assert (e["label"], e["contrast"], e["caption"]) == (meta["label"], meta["contrast"], meta["caption"])
    img = S.load_subject(tmp_path, e)
    assert img.shape == S.GRID and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    same, clean, sigma = S.load_subject(tmp_path, e, clean=True)
    subj = S.make_subject(10000, return_clean=True)
    np.testing.assert_array_equal(same, img)
    np.testing.assert_allclose(clean, subj["clean"], atol=1e-3)
    assert sigma == pytest.approx(subj["noise_sigma"]) and np.abs(img - clean).mean() > sigma / 2

    def boom(*a, **k):
        raise AssertionError("existing subject re-rendered")

    monkeypatch.setattr(S, "make_subject", boom)
    S.build_cohort(tmp_path, [10000], progress=False)  # skipped: no render
    assert S.load_index(tmp_path) == entries
    monkeypatch.undo()
    np.savez(tmp_path / e["file"], image=img.astype(np.float16))  # a file from before noise-free images
    S.build_cohort(tmp_path, [10000], progress=False)  # re-rendered
    assert len(S.load_subject(tmp_path, e, clean=True)) == 3
    with pytest.raises(ValueError):
        S.build_cohort(tmp_path, [15000], progress=False)


def _write_index_many(path: str) -> None:
    for i in range(200):
        S._write_index(Path(path), {i: {"seed": i}})


def test_cohort_index_can_be_written_by_builders_side_by_side(tmp_path):
    """scripts/train_gpu.sh runs one build_cohort per core; each must write the shared index.json without racing
    the others for one temporary file."""
    from concurrent.futures import ProcessPoolExecutor

    path = tmp_path / "index.json"
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_index_many, [str(path)] * 4))
    assert len(json.loads(path.read_text())) == 1
    assert not list(tmp_path.glob(".index.json*"))
