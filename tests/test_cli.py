"""CLI end to end with click's CliRunner, and the bad-input contract: one line, exit code 2."""

from __future__ import annotations

import hashlib
import json

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from ldp_med.cli import cli
from tests.conftest import ellipsoid_phantom, oblique_affine


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    err = result.stderr.strip() if result.stderr else result.output.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output
    for n in needles:
        assert str(n) in err, (n, err)


def test_simulate_reconstruct_evaluate_cs_beats_zero_filled(tmp_path, phantom_nifti):
    h5 = tmp_path / "scan.h5"
    before = digest(phantom_nifti)
    r = run("simulate", phantom_nifti, "-o", h5, "--task", "kspace", "--accel", 4, "--coils", 4, "--calib", 6, "--seed", 3)
    assert r.exit_code == 0, r.output
    assert digest(phantom_nifti) == before
    scores = {}
    for method in ("zero-filled", "cs"):
        out = tmp_path / f"{method}.nii.gz"
        r = run("reconstruct", h5, "-o", out, "--method", method, "--set", "baseline.cs_iters=40", "--set", "baseline.cs_lambda=0.001")
        assert r.exit_code == 0, r.output
        img = nib.load(str(out))
        np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-6)
        assert img.shape == ellipsoid_phantom().shape
        r = run("evaluate", out, "--reference", h5, "--json")
        assert r.exit_code == 0, r.output
        scores[method] = json.loads(r.output)
    assert scores["cs"]["psnr"] > scores["zero-filled"]["psnr"] + 1.0
    assert scores["cs"]["ssim"] > scores["zero-filled"]["ssim"]


def test_denoise_and_superres_round_trip(tmp_path, phantom_nifti):
    noisy = tmp_path / "noisy.nii.gz"
    assert run("simulate", phantom_nifti, "-o", noisy, "--task", "denoise", "--noise", 0.05).exit_code == 0
    den = tmp_path / "den.nii.gz"
    r = run("reconstruct", noisy, "-o", den, "--task", "denoise", "--report", tmp_path / "r.png")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.png").stat().st_size > 1000
    s_noisy = json.loads(run("evaluate", noisy, "--reference", phantom_nifti, "--json").output)
    s_den = json.loads(run("evaluate", den, "--reference", phantom_nifti, "--json").output)
    assert s_den["psnr"] > s_noisy["psnr"]

    thick = tmp_path / "thick.nii.gz"
    assert run("simulate", phantom_nifti, "-o", thick, "--task", "superres", "--factor", 2, "--axis", 1).exit_code == 0
    assert nib.load(str(thick)).shape == (21, 12, 19)
    fine = tmp_path / "fine.nii.gz"
    r = run("reconstruct", thick, "-o", fine, "--task", "superres", "--factor", 2, "--axis", 1)
    assert r.exit_code == 0, r.output
    img = nib.load(str(fine))
    assert img.shape == (21, 24, 19)
    np.testing.assert_allclose(img.affine, oblique_affine(), atol=1e-6)
    assert json.loads(run("evaluate", fine, "--reference", phantom_nifti, "--json").output)["psnr"] > 20


def test_superres_reads_the_slice_axis_and_factor_from_the_voxel_sizes(tmp_path):
    from ldp_med.problems import slice_geometry

    assert slice_geometry((0.9, 0.9, 3.0)) == (3, 2) and slice_geometry((4.0, 1.0, 1.1)) == (4, 0)
    assert slice_geometry((1.0, 1.0, 1.0)) == (2, 2) and slice_geometry((1.5, 1.2, 2.0)) == (2, 2)
    assert slice_geometry((4.0, 1.0, 1.0), factor=2) == (2, 0) and slice_geometry((4.0, 1.0, 1.0), axis=1) == (2, 1)
    affine = np.diag([1.2, 1.2, 1.2, 1.0])
    clean = _write_nifti(tmp_path / "clean.nii.gz", ellipsoid_phantom() * 200, affine)
    thick = tmp_path / "thick.nii.gz"
    assert run("simulate", clean, "-o", thick, "--task", "superres", "--factor", 3, "--axis", 0).exit_code == 0
    fine = tmp_path / "fine.nii.gz"
    r = run("reconstruct", thick, "-o", fine, "--task", "superres", "--method", "cubic")  # 3.6 x 1.2 x 1.2 mm
    assert r.exit_code == 0, r.output
    img = nib.load(str(fine))
    assert img.shape == (21, 24, 19)
    np.testing.assert_allclose(img.affine, affine, atol=1e-6)
    assert json.loads(run("evaluate", fine, "--reference", clean, "--json").output)["psnr"] > 20


def test_a_volume_without_a_task_gets_one_from_its_voxel_sizes_and_says_so(tmp_path):
    """Users run ``ldp-med reconstruct scan.nii.gz``: thick slices (an axis 1.5x thicker) are super-resolved, other
    volumes denoised, the choice printed once the output is written (a refusal, even at loading, stays one line)."""
    from ldp_med.problems import is_thick

    assert is_thick((0.9, 0.9, 3.0)) and is_thick((4.0, 1.0, 1.1)) and is_thick((1.0, 1.0, 1.5))
    assert not is_thick((1.0, 1.0, 1.0)) and not is_thick((1.0, 1.0, 1.4)) and not is_thick((1.5, 1.2, 2.0))
    clean = _write_nifti(tmp_path / "clean.nii.gz", ellipsoid_phantom() * 200, np.diag([1.2, 1.2, 1.2, 1.0]))
    noisy, thick = tmp_path / "noisy.nii.gz", tmp_path / "thick.nii.gz"
    assert run("simulate", clean, "-o", noisy, "--task", "denoise").exit_code == 0
    assert run("simulate", clean, "-o", thick, "--task", "superres", "--factor", 3, "--axis", 0).exit_code == 0
    r = run("reconstruct", noisy, "--method", "nlm")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == (f"{noisy}: denoise (1.2 x 1.2 x 1.2 mm voxels: no axis 1.5x thicker than the others; "
                                "--task superres for thick slices)")
    assert r.stdout.strip() == f"wrote {tmp_path / 'noisy_nlm.nii.gz'}"
    r = run("reconstruct", thick, "--method", "cubic")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith(f"{thick}: superres (3.6 x 1.2 x 1.2 mm voxels: one axis 1.5x or more thicker")
    assert nib.load(str(tmp_path / "thick_cubic.nii.gz")).shape == (21, 24, 19)
    r = run("reconstruct", noisy, "--method", "cubic")
    assert_one_line_error(r, noisy, "does not apply to task denoise")
    assert r.stderr.count(str(noisy)) == 1, r.stderr  # the input named once (it was twice until session 54)
    assert_one_line_error(run("reconstruct", thick, "--method", "cubic"), "thick_cubic.nii.gz", "--force")
    four = _write_nifti(tmp_path / "four.nii.gz", np.stack([ellipsoid_phantom() * 200] * 2, -1), np.eye(4))
    assert_one_line_error(run("reconstruct", four, "--method", "nlm"), four, "--volume-index")  # found at loading
    r = run("reconstruct", thick, "--task", "denoise", "--method", "nlm")  # a task given: nothing printed
    assert r.exit_code == 0 and r.stderr == "", r.output


def test_existing_output_needs_force(tmp_path, phantom_nifti):
    out = tmp_path / "noisy.nii.gz"
    assert run("simulate", phantom_nifti, "-o", out, "--task", "denoise").exit_code == 0
    before = digest(out)
    r = run("simulate", phantom_nifti, "-o", out, "--task", "denoise", "--seed", 5)
    assert_one_line_error(r, out, "--force")
    assert digest(out) == before
    assert run("simulate", phantom_nifti, "-o", out, "--task", "denoise", "--seed", 5, "--force").exit_code == 0
    assert digest(out) != before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _write_nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "nan", "four_d", "two_d", "empty"])
def test_bad_volume_inputs(tmp_path, case):
    p = tmp_path / "bad.nii.gz"
    data = ellipsoid_phantom()
    if case == "text":
        p.write_text("this is not a NIfTI file\n")
    elif case == "truncated":
        _write_nifti(p, data)
        raw = p.read_bytes()
        p.write_bytes(raw[: len(raw) // 2])
    elif case == "nan":
        data[3, 4, 5] = np.nan
        _write_nifti(p, data)
    elif case == "four_d":
        _write_nifti(p, np.stack([data, data], -1))
    elif case == "two_d":
        _write_nifti(p, data[:, :, 0])
    elif case == "empty":
        _write_nifti(p, np.zeros((4, 0, 3), np.float32))
    r = run("simulate", p, "-o", tmp_path / "o.h5")
    assert_one_line_error(r, p)
    assert not (tmp_path / "o.h5").exists()


def test_four_d_with_volume_index(tmp_path):
    p = _write_nifti(tmp_path / "fourd.nii.gz", np.stack([ellipsoid_phantom(), ellipsoid_phantom()], -1))
    r = run("simulate", p, "-o", tmp_path / "n.nii.gz", "--task", "denoise", "--volume-index", 1)
    assert r.exit_code == 0, r.output


def _good_container(tmp_path, phantom_nifti):
    h5 = tmp_path / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 2, "--calib", 6).exit_code == 0
    return h5


@pytest.mark.parametrize("dataset,bad", [
    ("mask", np.ones((1, 5, 5), np.uint8)),
    ("sensitivity_maps", np.ones((2, 3, 3, 3), np.complex64)),
    ("kspace", np.ones((2, 21, 24, 19), np.float32)),
])
def test_bad_kspace_containers(tmp_path, phantom_nifti, dataset, bad):
    h5 = _good_container(tmp_path, phantom_nifti)
    with h5py.File(h5, "a") as f:
        del f[dataset]
        f[dataset] = bad
    r = run("reconstruct", h5, "-o", tmp_path / "o.nii.gz", "--method", "zero-filled")
    assert_one_line_error(r, h5)


def test_text_file_posing_as_container(tmp_path):
    p = tmp_path / "scan.h5"
    p.write_text("hello")
    assert_one_line_error(run("reconstruct", p, "-o", tmp_path / "o.nii.gz"), p)


def test_output_folder_problems(tmp_path, phantom_nifti):
    missing = tmp_path / "nope" / "o.h5"
    assert_one_line_error(run("simulate", phantom_nifti, "-o", missing), "nope")
    assert_one_line_error(run("simulate", phantom_nifti, "-o", "/sys/o.h5"), "/sys")


def test_nifti_without_task_and_wrong_method(tmp_path, phantom_nifti):
    r = run("reconstruct", phantom_nifti, "-o", tmp_path / "o.nii.gz", "--method", "cs")  # read as denoise
    assert_one_line_error(r, phantom_nifti, "'cs' does not apply to task denoise")
    r = run("reconstruct", phantom_nifti, "-o", tmp_path / "o.nii.gz", "--task", "denoise", "--method", "cs")
    assert_one_line_error(r, "cs", "denoise")


def test_evaluate_shape_mismatch(tmp_path, phantom_nifti):
    other = _write_nifti(tmp_path / "other.nii.gz", np.zeros((5, 5, 5), np.float32))
    assert_one_line_error(run("evaluate", other, "--reference", phantom_nifti), other)


def test_evaluate_compares_voxels_at_the_same_place_whatever_the_storage_order(tmp_path, phantom_nifti):
    """A reconstruction stored in another axis order (FreeSurfer's LIA MGZ) scores as its RAS copy does against a RAS
    reference (it scored as unrelated images before: same shape, voxels compared at different places); a grid moved
    by 2 mm is refused in one line, never scored."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    ref = nib.load(str(phantom_nifti))
    noisy = np.asarray(ref.dataobj, np.float32) + np.random.default_rng(0).normal(0, 5, ref.shape).astype(np.float32)
    same = _write_nifti(tmp_path / "same.nii.gz", noisy, ref.affine)
    ornt = ornt_transform(io_orientation(ref.affine), axcodes2ornt("LIA"))
    stored = nib.MGHImage(apply_orientation(noisy, ornt), ref.affine @ inv_ornt_aff(ornt, noisy.shape))
    nib.save(stored, str(tmp_path / "lia.mgz"))
    scores = [json.loads(run("evaluate", p, "--reference", phantom_nifti, "--json").output)
              for p in (same, tmp_path / "lia.mgz")]
    assert scores[0]["psnr"] > 25 and scores[1] == pytest.approx(scores[0], rel=1e-6)
    moved = ref.affine.copy()
    moved[:3, 3] += 2.0
    shifted = _write_nifti(tmp_path / "moved.nii.gz", noisy, moved)
    assert_one_line_error(run("evaluate", shifted, "--reference", phantom_nifti), shifted, "grid is not the reference's")


def test_evaluate_writes_an_error_report_on_the_references_grid_and_never_over_a_file(tmp_path, phantom_nifti):
    from PIL import Image

    ref = nib.load(str(phantom_nifti))
    noisy = np.asarray(ref.dataobj, np.float32) + np.random.default_rng(0).normal(0, 5, ref.shape).astype(np.float32)
    rec = _write_nifti(tmp_path / "rec.nii.gz", noisy, ref.affine)
    png = tmp_path / "err.png"
    r = run("evaluate", rec, "--reference", phantom_nifti, "--report", png)
    assert r.exit_code == 0, r.output
    pixels = np.asarray(Image.open(png).convert("L"), np.float32)
    assert pixels.shape == (720, 720)  # three rows (reference, reconstruction, error) of 3 x 3 inches at 80 dpi
    assert pixels[480:].max() == 255  # the error, magnified 10 times, saturates somewhere
    assert_one_line_error(run("evaluate", rec, "--reference", phantom_nifti, "--report", png), png, "--force")
    assert run("evaluate", rec, "--reference", phantom_nifti, "--report", png, "--force").exit_code == 0
    before = digest(rec)
    assert_one_line_error(run("evaluate", rec, "--reference", phantom_nifti, "--report", rec, "--force"), rec,
                          "output is the input")
    assert digest(rec) == before


def test_bad_config_override(tmp_path, phantom_nifti):
    h5 = _good_container(tmp_path, phantom_nifti)
    assert_one_line_error(run("reconstruct", h5, "-o", tmp_path / "o.nii.gz", "--set", "baseline.cs_iters=x"), "cs_iters")


def test_torchrun_shards_inputs_across_ranks(tmp_path, phantom_nifti):
    import os
    import subprocess
    import sys

    ins = []
    for i in range(3):
        p = tmp_path / f"noisy{i}.nii.gz"
        assert run("simulate", phantom_nifti, "-o", p, "--task", "denoise", "--seed", i).exit_code == 0
        ins.append(str(p))
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", "-m", "ldp_med",
           "reconstruct", *ins, "-o", str(out), "--task", "denoise", "--method", "nlm"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["noisy0.nii.gz", "noisy1.nii.gz", "noisy2.nii.gz"]


@pytest.mark.parametrize("args,fails", [
    (["--task", "kspace"], True), (["--task", "denoise"], True),
    (["--task", "denoise", "--noise-kind", "gaussian"], False), (["--task", "superres"], False),
])
def test_a_signed_volume_is_refused_where_the_simulation_needs_a_magnitude(tmp_path, args, fails):
    # a statistical map: +-1 blobs; k-space and Rician noise model a magnitude image, Gaussian noise and thick
    # slices do not care about the sign
    data = ellipsoid_phantom() - np.roll(ellipsoid_phantom(), 5, axis=0)
    v = _write_nifti(tmp_path / "tmap.nii.gz", data.astype(np.float32))
    out = tmp_path / ("o.h5" if "kspace" in args else "o.nii.gz")
    r = run("simulate", v, "-o", out, *args)
    if fails:
        assert_one_line_error(r, v, "signed intensities", "magnitude image")
        assert not out.exists()
    else:
        assert r.exit_code == 0, r.output


@pytest.mark.parametrize("volume,needle", [
    (np.zeros((21, 24, 19), np.float32), "constant intensity"),
    (np.arange(8, dtype=np.float32).reshape(2, 2, 2), "volume too small (2x2x2)"),
])
@pytest.mark.parametrize("command", [
    ["simulate", "{v}", "-o", "{d}/o.h5"],
    ["simulate", "{v}", "-o", "{d}/o.nii.gz", "--task", "denoise"],
    ["reconstruct", "{v}", "-o", "{d}/o.nii.gz", "--task", "denoise"],
    ["reconstruct", "{v}", "-o", "{d}/o.nii.gz", "--task", "superres"],
    ["autoencode", "{v}", "-o", "{d}/o.nii.gz"],
    ["evaluate", "{p}", "--reference", "{v}"],
])
def test_all_zero_and_tiny_volumes_fail_in_one_line(tmp_path, phantom_nifti, volume, needle, command):
    v = _write_nifti(tmp_path / "v.nii.gz", volume)
    out = tmp_path / "out"
    out.mkdir()
    r = run(*[a.format(v=v, d=out, p=phantom_nifti) for a in command])
    assert_one_line_error(r, v, needle)
    assert not r.stderr.lower().count("warning") and list(out.iterdir()) == []


def test_without_out_each_output_is_named_for_its_input_and_method_beside_it(tmp_path, phantom_nifti, monkeypatch):
    scans = tmp_path / "scans"
    scans.mkdir()
    h5 = scans / "scan.h5"
    assert run("simulate", phantom_nifti, "-o", h5, "--coils", 2, "--calib", 6).exit_code == 0
    before = digest(h5)
    monkeypatch.chdir(tmp_path)  # not the input's folder
    r = run("reconstruct", h5, "--method", "zero-filled")
    assert r.exit_code == 0, r.output
    out = scans / "scan_zero-filled.nii.gz"
    assert r.output.strip() == f"wrote {out}"
    assert nib.load(str(out)).shape == (21, 24, 19) and digest(h5) == before
    assert_one_line_error(run("reconstruct", h5, "--method", "zero-filled"), out, "--force")
    assert run("reconstruct", h5, "--method", "cs").exit_code == 0
    assert (scans / "scan_cs.nii.gz").exists()
    # several inputs, a FreeSurfer one keeps its format; a folder of DICOM slices is named after the folder
    assert run("simulate", phantom_nifti, "-o", scans / "noisy.mgz", "--task", "denoise").exit_code == 0
    assert run("simulate", phantom_nifti, "-o", scans / "series", "--task", "denoise").exit_code == 0
    r = run("reconstruct", scans / "noisy.mgz", f"{scans / 'series'}/", "--task", "denoise", "--method", "nlm")
    assert r.exit_code == 0, r.output
    assert (scans / "noisy_nlm.mgz").exists() and (scans / "series_nlm.nii.gz").exists()


def test_simulate_without_out_names_its_output_for_the_task_beside_its_input(tmp_path, phantom_nifti, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    for task, name in (("kspace", "phantom_kspace.h5"), ("denoise", "phantom_noisy.nii.gz"),
                       ("superres", "phantom_thick.nii.gz")):
        r = run("simulate", phantom_nifti, "--task", task, "--coils", 2, "--calib", 6)
        assert r.exit_code == 0, r.output
        assert r.output.strip() == f"wrote {tmp_path / name}" and (tmp_path / name).is_file()
    assert_one_line_error(run("simulate", phantom_nifti, "--task", "denoise"), "phantom_noisy.nii.gz", "--force")
    assert_one_line_error(run("simulate", tmp_path / "missing.nii.gz"), "missing.nii.gz", "no such file")
    r = run("reconstruct", tmp_path / "phantom_kspace.h5", "--method", "zero-filled")
    assert r.exit_code == 0 and (tmp_path / "phantom_kspace_zero-filled.nii.gz").is_file(), r.output


def test_autoencode_without_out_writes_beside_its_input(tmp_path, phantom_nifti, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)
    r = run("autoencode", phantom_nifti)
    out = tmp_path / "phantom_ae.nii.gz"
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"wrote {out}" and nib.load(str(out)).shape == (21, 24, 19)
    assert_one_line_error(run("autoencode", phantom_nifti), out, "--force")
    assert_one_line_error(run("autoencode", tmp_path / "missing.nii.gz"), "missing.nii.gz", "no such file")
