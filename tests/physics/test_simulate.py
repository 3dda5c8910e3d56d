"""simulate(): dispatch on the task, the source attribute, and no files written."""

from __future__ import annotations

import numpy as np

from ldp_med.config import SimulateConfig
from ldp_med.io.kspace import KSpaceData, load_kspace
from ldp_med.io.loaders import save_output
from ldp_med.io.volume import Volume
from ldp_med.physics.simulate import simulate, simulate_kspace
from tests.conftest import ellipsoid_phantom


def test_simulate_dispatches_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vol = Volume(ellipsoid_phantom((11, 12, 10)), np.eye(4))
    cfg = SimulateConfig(task="kspace", coils=2, calib=4, accel=2.0, noise=0.001, seed=1)
    ksp = simulate(vol, cfg, source="clean.nii.gz")
    assert isinstance(ksp, KSpaceData) and ksp.attrs["source"] == "clean.nii.gz"
    np.testing.assert_array_equal(ksp.kspace, simulate_kspace(vol, cfg).kspace)
    assert "source" not in simulate(vol, cfg).attrs
    noisy = simulate(vol, SimulateConfig(task="denoise", noise=0.05, seed=1), source="ignored")
    thick = simulate(vol, SimulateConfig(task="superres", factor=2, axis=1))
    assert isinstance(noisy, Volume) and noisy.shape == (11, 12, 10) and "source" not in noisy.meta
    assert isinstance(thick, Volume) and thick.shape == (11, 6, 10)
    assert list(tmp_path.iterdir()) == []
    assert load_kspace(save_output(ksp, tmp_path / "k.h5")).attrs["source"] == "clean.nii.gz"
    assert save_output(thick, tmp_path / "t.nii.gz").is_file()
