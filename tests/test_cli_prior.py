"""`ldp-med reconstruct --method prior|dps` end to end with a tiny (untrained) model folder."""

from __future__ import annotations

import dataclasses

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ldp_med.cli import cli
from ldp_med.models.builders import build_models
from ldp_med.models.pretrained import save_pretrained
from tests.conftest import TINY_MODEL, oblique_affine


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY_MODEL, voxel_mm=2.0)  # 48x64x48 mm: covers the phantom's field of view
    vae, unet = build_models(cfg)
    return save_pretrained(tmp_path / "tiny_model", cfg, vae, unet)


def test_prior_with_samples_writes_mean_std_and_report(tmp_path, phantom_nifti, model_dir):
    h5 = tmp_path / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 3, "--calib", 6).exit_code == 0
    out = tmp_path / "recon.nii.gz"
    r = run("reconstruct", h5, "-o", out, "--method", "prior", "--samples", 2, "--steps", 10, "--model", model_dir,
            "--set", "posterior.prior_error=1.0", "--report", tmp_path / "r.png", "--device", "cpu")
    assert r.exit_code == 0, r.output
    std = tmp_path / "recon_std.nii.gz"
    for p in (out, std):
        img = nib.load(str(p))
        assert img.shape == (21, 24, 19)
        np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-5)
        assert np.isfinite(img.get_fdata()).all()
    assert nib.load(str(std)).get_fdata().max() > 0
    assert (tmp_path / "r.png").stat().st_size > 1000
    # same seed, same output
    out2 = tmp_path / "again.nii.gz"
    assert run("reconstruct", h5, "-o", out2, "--method", "prior", "--samples", 2, "--steps", 10, "--model", model_dir,
               "--set", "posterior.prior_error=1.0").exit_code == 0
    np.testing.assert_array_equal(nib.load(str(out)).get_fdata(), nib.load(str(out2)).get_fdata())


def test_every_long_stage_of_the_prior_shows_a_progress_bar(tmp_path, phantom_nifti, model_dir):
    """A 1 mm head's k-space reconstruction spent minutes after its last bar (the latent fit and closing solves had
    none, nor ESPIRiT for a container without coil maps): each stage now has its bar."""
    h5 = tmp_path / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 3, "--calib", 6).exit_code == 0
    with h5py.File(h5, "r+") as f:
        del f["sensitivity_maps"]  # as a scanner's container: ESPIRiT estimates them
    r = run("reconstruct", h5, "-o", tmp_path / "recon.nii.gz", "--samples", 2, "--steps", 10, "--model", model_dir,
            "--set", "posterior.latent_fit_iters=2")
    assert r.exit_code == 0, r.output
    for stage in ("EspiritCalib", "dds", "latent fit", "agreement", "closing", "spread", "air probe"):
        assert f"{stage}: 100%" in r.stderr, (stage, r.stderr[-2000:])


def test_prior_denoise_and_dps_superres(tmp_path, phantom_nifti, model_dir):
    noisy = tmp_path / "noisy.nii.gz"
    assert run("simulate", phantom_nifti, "-o", noisy, "--task", "denoise").exit_code == 0
    r = run("reconstruct", noisy, "-o", tmp_path / "d.nii.gz", "--task", "denoise", "--method", "prior",
            "--steps", 10, "--model", model_dir)
    assert r.exit_code == 0, r.output
    thick = tmp_path / "thick.nii.gz"
    assert run("simulate", phantom_nifti, "-o", thick, "--task", "superres", "--axis", 0).exit_code == 0
    r = run("reconstruct", thick, "-o", tmp_path / "s.nii.gz", "--task", "superres", "--axis", 0, "--method", "dps",
            "--steps", 6, "--model", model_dir)
    assert r.exit_code == 0, r.output
    assert nib.load(str(tmp_path / "s.nii.gz")).shape == (20, 24, 19)


def test_prior_bad_arguments_are_one_line_errors(tmp_path, phantom_nifti, model_dir):
    noisy = tmp_path / "noisy.nii.gz"
    assert run("simulate", phantom_nifti, "-o", noisy, "--task", "denoise").exit_code == 0
    for args in (["--samples", 0], ["--model", tmp_path / "missing"], ["--steps", 500]):
        r = run("reconstruct", noisy, "-o", tmp_path / "o.nii.gz", "--task", "denoise", "--method", "prior",
                "--model", model_dir, *args)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1


def test_yaml_task_and_method_reach_the_reconstruction(tmp_path, phantom_nifti, model_dir):
    """`task:` and `method:` from --config are used unless an option overrides them (issue 16)."""
    noisy = tmp_path / "noisy.nii.gz"
    assert run("simulate", phantom_nifti, "-o", noisy, "--task", "denoise").exit_code == 0
    cfg = tmp_path / "denoise.yaml"
    cfg.write_text("task: denoise\nmethod: prior\nposterior:\n  steps: 10\n")
    r = run("reconstruct", noisy, "-o", tmp_path / "yaml.nii.gz", "--config", cfg, "--model", model_dir)
    assert r.exit_code == 0, r.output
    r = run("reconstruct", noisy, "-o", tmp_path / "flags.nii.gz", "--task", "denoise", "--method", "prior",
            "--steps", 10, "--model", model_dir)
    assert r.exit_code == 0, r.output
    yaml_out = nib.load(str(tmp_path / "yaml.nii.gz")).get_fdata()
    np.testing.assert_array_equal(yaml_out, nib.load(str(tmp_path / "flags.nii.gz")).get_fdata())
    # an option overrides the YAML's method: NLM differs from the prior
    r = run("reconstruct", noisy, "-o", tmp_path / "nlm.nii.gz", "--config", cfg, "--method", "nlm")
    assert r.exit_code == 0, r.output
    assert not np.array_equal(nib.load(str(tmp_path / "nlm.nii.gz")).get_fdata(), yaml_out)


@pytest.mark.parametrize("calib", [500, 0, -3, 16])
def test_espirit_calib_that_does_not_fit_is_one_line(tmp_path, phantom_nifti, calib):
    h5 = tmp_path / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 3, "--calib", 6).exit_code == 0
    r = run("reconstruct", h5, "-o", tmp_path / "o.nii.gz", "--method", "zero-filled",
            "--set", f"baseline.espirit_calib={calib}")
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "espirit_calib" in r.stderr
    assert not (tmp_path / "o.nii.gz").exists()


def test_monai_pipeline_and_cli_agree_on_a_kspace_file(tmp_path, phantom_nifti, model_dir):
    from ldp_med.config import PosteriorConfig
    from ldp_med.integration.monai import LatentPosteriorInferer
    from ldp_med.io.kspace import load_kspace
    from ldp_med.models.pretrained import load_pretrained

    h5 = tmp_path / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 3, "--calib", 6).exit_code == 0
    out = tmp_path / "cli.nii.gz"
    r = run("reconstruct", h5, "-o", out, "--method", "prior", "--steps", 10, "--model", model_dir)
    assert r.exit_code == 0, r.output
    inferer = LatentPosteriorInferer(load_pretrained(model_dir), task="kspace", config=PosteriorConfig(steps=10))
    mean = inferer(load_kspace(h5))
    img = nib.load(str(out))
    np.testing.assert_allclose(img.get_fdata(), mean[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(img.affine, mean.affine.numpy(), atol=1e-5)


def test_the_default_methods_outputs_and_memory_are_settled_before_any_work(tmp_path, phantom_nifti, model_dir,
                                                                            monkeypatch):
    """No --method: the task's default (the prior for k-space) is settled at the boundary, so its std map is checked
    with the other outputs before any work, and the memory estimate counts the prior's grid."""
    import ldp_med.pipeline as pipeline

    h5 = tmp_path / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 3, "--calib", 6).exit_code == 0
    (tmp_path / "recon_std.nii.gz").write_bytes(b"kept")

    def no_work(*args, **kwargs):
        raise AssertionError("reconstructed before the outputs were checked")

    monkeypatch.setattr(pipeline, "reconstruct_file", no_work)
    r = run("reconstruct", h5, "-o", tmp_path / "recon.nii.gz", "--samples", 2, "--model", model_dir)
    assert r.exit_code == 2, r.output
    assert "recon_std.nii.gz" in r.stderr and "--force" in r.stderr
    assert not (tmp_path / "recon.nii.gz").exists()

    seen = []
    monkeypatch.setattr(pipeline, "check_reconstruction_memory",
                        lambda path, cfg, prior=None: seen.append((cfg.task, cfg.method, prior is not None)))
    r = run("reconstruct", h5, "-o", tmp_path / "other.nii.gz", "--model", model_dir)
    assert isinstance(r.exception, AssertionError)  # reached the work, after the checks
    assert seen == [("kspace", "prior", True)]
