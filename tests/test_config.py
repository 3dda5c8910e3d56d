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


def test_the_classical_method_to_blend_with_is_one_of_the_tasks():
    assert apply_overrides(ReconstructConfig(task="denoise"), ["closing.classical=bm4d"]).closing.classical == "bm4d"
    assert apply_overrides(ReconstructConfig(), ["closing.classical=selfsim"]).closing.classical == "selfsim"  # auto
    with pytest.raises(ConfigError, match="not a classical method of task 'denoise'"):
        apply_overrides(ReconstructConfig(task="denoise"), ["closing.classical=selfsim"])
    with pytest.raises(ConfigError, match="'cs' is not one of"):  # k-space's are never blended with
        apply_overrides(ReconstructConfig(), ["closing.classical=cs"])


def test_unknown_yaml_key_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("accel: 4\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(SimulateConfig, p)


def test_int_accepted_for_float_but_not_bool_for_int():
    assert from_dict(SimulateConfig, {"accel": 8}).accel == 8.0
    with pytest.raises(ConfigError):
        from_dict(SimulateConfig, {"coils": True})


def test_shipped_configs_load_and_the_last_stage_matches_the_shipped_weights():
    from pathlib import Path

    from ldp_med.config import PriorTrainConfig, VAETrainConfig, load_config
    from ldp_med.models.pretrained import load_pretrained

    configs = Path(__file__).resolve().parents[1] / "configs"
    for p in sorted(configs.glob("*.yaml")):
        load_config(VAETrainConfig if p.name.startswith("vae") else PriorTrainConfig, p)
    last = load_config(PriorTrainConfig, configs / "prior_pca_wide_metric.yaml")  # train_default.sh stage 3, shipped
    shipped = load_pretrained(with_unet=False).config
    assert (last.model.vae, last.model.unet, last.model.scheduler) == (shipped.vae, shipped.unet, shipped.scheduler)
    assert tuple(last.model.grid) == tuple(shipped.grid)


def test_base_file_is_merged_underneath_section_by_section(tmp_path):
    (tmp_path / "a.yaml").write_text("method: tv\nbaseline:\n  cs_lambda: 0.01\n  cs_iters: 5\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("base: ../a.yaml\nbaseline:\n  cs_iters: 7\n")
    (tmp_path / "c.yaml").write_text("base: sub/b.yaml\nmethod: cs\n")
    cfg = load_config(ReconstructConfig, tmp_path / "c.yaml")
    assert (cfg.method, cfg.baseline.cs_lambda, cfg.baseline.cs_iters) == ("cs", 0.01, 7)


@pytest.mark.parametrize("text, match", [("base: self.yaml\n", "cycle"), ("base: missing.yaml\n", "missing.yaml"),
                                         ("base: [a]\n", "file name")])
def test_bad_base_is_a_config_error(tmp_path, text, match):
    p = tmp_path / "self.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(SimulateConfig, p)


def test_model_config_defaults_describe_the_shipped_model():
    from ldp_med.config import ModelConfig, to_dict
    from ldp_med.models.pretrained import DEFAULT_MODEL_DIR, read_config

    shipped, default = to_dict(read_config(DEFAULT_MODEL_DIR)), to_dict(ModelConfig())
    for key in ("grid", "voxel_mm", "vae", "unet", "scheduler", "class_names", "text_encoder"):
        assert default[key] == shipped[key], key
