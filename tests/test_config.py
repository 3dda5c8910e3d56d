import pytest

from ldp_med.config import BaselineConfig, ReconstructConfig, SimulateConfig, apply_overrides, from_dict, load_config
from ldp_med.errors import ConfigError


def test_yaml_fills_fields_and_overrides_are_typed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("method: tv\nbaseline:\n  cs_lambda: 0.01\n  cs_iters: 5\n")
    cfg = load_config(ReconstructConfig, p, ["baseline.tv_lambda=0.004"])
    assert cfg.method == "tv" and cfg.baseline.cs_lambda == 0.01 and cfg.baseline.cs_iters == 5
    assert cfg.baseline.tv_lambda == 0.004
    assert isinstance(cfg.baseline, BaselineConfig)


@pytest.mark.parametrize("override", ["baseline.nope=1", "nope=1", "baseline.cs_iters=1.5", "task=bogus", "baseline=3"])
def test_bad_overrides_raise(override):
    with pytest.raises(ConfigError):
        apply_overrides(ReconstructConfig(), [override])


def test_unknown_yaml_key_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("accel: 4\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(SimulateConfig, p)


def test_int_accepted_for_float_but_not_bool_for_int():
    assert from_dict(SimulateConfig, {"accel": 8}).accel == 8.0
    with pytest.raises(ConfigError):
        from_dict(SimulateConfig, {"coils": True})
