"""Faults with real processes: kill -9, full disk, read-only folders, concurrent writers, too little memory.

Every refusal is one line and exit code 2; no input is touched and nothing partial is left behind.
Subprocesses run ``python -m ldp_med`` on tiny phantoms; ``LDP_MED_TEST_WRITE_PAUSE`` (ldp_med.io.atomic)
holds a writer between "data written" and "linked into place" so a kill lands inside the write.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from ldp_med import resources
from ldp_med.cli import cli
from ldp_med.config import to_dict
from ldp_med.errors import InputError
from ldp_med.io.atomic import PAUSE_ENV, atomic_open, check_output, write_bytes
from ldp_med.training.distributed import DistInfo
from ldp_med.training.loop import recover_checkpoint
from ldp_med.training.vae import train_vae
from tests.conftest import vae_cfg

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_line_error(stderr: str, *needles) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith("ldp-med: test pause")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def assert_cli_error(result, *needles):
    assert result.exit_code == 2, result.output
    one_line_error(result.stderr if result.stderr else result.output, *needles)


def spawn(*args, env=None, preexec_fn=None) -> subprocess.Popen:
    """``python -m ldp_med ARGS`` in the repository root, one thread, stderr piped."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "ldp_med", *map(str, args)], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 60.0) -> str:
    """Read stderr until a line containing ``needle`` (the process must still be running)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if needle in line:
            return line
    proc.kill()
    raise AssertionError(f"no {needle!r} on stderr:\n{''.join(seen)}")


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def scan_h5(tmp_path, phantom_nifti):
    """A 4-coil k-space container of the phantom, alone in its own folder."""
    folder = tmp_path / "scan"
    folder.mkdir()
    path = folder / "scan.h5"
    r = run("simulate", phantom_nifti, "-o", path, "--coils", 4, "--calib", 6)
    assert r.exit_code == 0, r.output
    return path


# -- the input is never an output ------------------------------------------------------------------------
def test_output_equal_to_input_is_refused_even_with_force(tmp_path, phantom_nifti):
    before = digest(phantom_nifti)
    link = tmp_path / "link.nii.gz"
    link.symlink_to(phantom_nifti)
    hard = tmp_path / "hard.nii.gz"
    os.link(phantom_nifti, hard)
    spelled = tmp_path / "sub" / ".." / phantom_nifti.name
    (tmp_path / "sub").mkdir()
    for out in (phantom_nifti, link, spelled):
        for args in (("reconstruct", phantom_nifti, "--task", "denoise"), ("simulate", phantom_nifti, "--task", "denoise"),
                     ("autoencode", phantom_nifti)):
            assert_cli_error(run(*args, "-o", out, "--force"), "is the input")
    assert_cli_error(run("reconstruct", hard, "--task", "denoise", "-o", phantom_nifti, "--force"), "is the input")
    assert_cli_error(run("reconstruct", phantom_nifti, "--task", "denoise", "-o", tmp_path / "r.nii.gz",
                         "--report", phantom_nifti, "--force"), "is the input")
    assert digest(phantom_nifti) == before


def test_output_inside_an_input_folder_is_refused(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"not read: the output check comes first")
    assert_cli_error(run("reconstruct", series, "--task", "denoise", "-o", series / "out.nii.gz", "--force"),
                     "inside the input folder")
    assert listing(series) == {"IM0001.dcm"}


# -- kill -9 -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("after", [0.5, 4.0])
def test_kill_during_reconstruct_leaves_nothing(tmp_path, scan_h5, after):
    """Killed while starting up or while CS iterates (it would run for minutes): no output, no temporary."""
    out = tmp_path / "out"
    out.mkdir()
    proc = spawn("reconstruct", scan_h5, "-o", out / "rec.nii.gz", "--method", "cs", "--set", "baseline.cs_iters=100000",
                 "--report", out / "rec.png")
    time.sleep(after)
    assert proc.poll() is None, proc.communicate()
    proc.kill()
    proc.wait()
    assert listing(out) == set()
    assert listing(scan_h5.parent) == {"scan.h5"}


def test_kill_during_the_write_of_reconstruct_leaves_nothing(tmp_path, scan_h5):
    out = tmp_path / "out"
    out.mkdir()
    proc = spawn("reconstruct", scan_h5, "-o", out / "rec.nii.gz", "--method", "zero-filled",
                 env={PAUSE_ENV: "60"})
    wait_for_line(proc, "test pause before linking")
    proc.kill()
    proc.wait()
    assert listing(out) == set()


def test_kill_during_an_atomic_write_leaves_nothing(tmp_path):
    """The writer layer alone: killed after all bytes are written but before the link, no name exists."""
    code = ("import sys; from ldp_med.io.atomic import write_bytes; "
            "write_bytes(sys.argv[1], b'x' * 5_000_000)")
    env = {**os.environ, PAUSE_ENV: "60", "PYTHONPATH": str(ROOT)}
    for force in (False, True):
        dest = tmp_path / "out.bin"
        if force:
            dest.write_bytes(b"old")
            code = code.replace("000_000)", "000_000, force=True)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], env=env, stderr=subprocess.PIPE, text=True)
        wait_for_line(proc, "test pause before linking")
        proc.kill()
        proc.wait()
        assert listing(tmp_path) == ({"out.bin"} if force else set())
        if force:
            assert dest.read_bytes() == b"old"


def test_kill_during_a_dicom_series_write_leaves_no_series_and_the_old_one_whole(tmp_path):
    """A series folder appears whole: killed after its files are written and before the rename, the destination is
    absent (or, with force, the old series unchanged); the next write of it clears the killed one's hidden folder."""
    code = ("import sys, numpy as np; from ldp_med.io import Volume; from ldp_med.io.dicom_out import save_dicom; "
            "save_dicom(Volume(np.arange(9 * 8 * 7, dtype=np.float32).reshape(9, 8, 7)), sys.argv[1], force=FORCE)")
    env = {**os.environ, PAUSE_ENV: "60", "PYTHONPATH": str(ROOT)}
    dest = tmp_path / "series"
    for force in (False, True):
        if force:
            dest.mkdir()
            (dest / "IM00001.dcm").write_bytes(b"old")
        proc = subprocess.Popen([sys.executable, "-c", code.replace("FORCE", str(force)), str(dest)], env=env,
                                stderr=subprocess.PIPE, text=True)
        wait_for_line(proc, "test pause before linking")
        proc.kill()
        proc.wait()
        hidden = {n for n in listing(tmp_path) if n.startswith(".series.")}
        assert len(hidden) == 1 and listing(tmp_path) - hidden == ({"series"} if force else set())
        if force:
            assert listing(dest) == {"IM00001.dcm"} and (dest / "IM00001.dcm").read_bytes() == b"old"
    subprocess.run([sys.executable, "-c", code.replace("FORCE", "True"), str(dest)], env={**env, PAUSE_ENV: "0"},
                   check=True)
    assert listing(tmp_path) == {"series"} and len(listing(dest)) == 7


def _write_config(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return path


def test_kill_during_training_then_resume_matches_an_uninterrupted_run(tmp_path, cohort_dir):
    cfg = vae_cfg(cohort_dir, steps=8, checkpoint_every=2, threads=1)
    train_vae(cfg, tmp_path / "whole", DistInfo(), progress=False)  # the reference, in this process
    yml = _write_config(cfg, tmp_path / "vae.yaml")
    out = tmp_path / "killed"
    proc = spawn("train", "vae", "--config", yml, "--out", out, "--device", "cpu")
    deadline = time.monotonic() + 120
    while not (out / "checkpoint" / "state.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()  # just after the first checkpoint, usually inside the next interval or checkpoint
    proc.wait()
    step = _checkpoint_step(out)
    assert 2 <= step < 8, "killed too late to test anything"
    train_vae(cfg, out, DistInfo(), progress=False, resume=True)  # the resume, here: the kill is what needs a process
    _assert_same_weights(tmp_path / "whole", out)


def _checkpoint_step(out: Path) -> int:
    import json

    recover_checkpoint(out)
    return json.loads((out / "checkpoint" / "state.json").read_text())["step"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "checkpoint" / "model.safetensors"), load_file(b / "checkpoint" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k


@pytest.mark.parametrize("kill_at", ["renames", "old_removed", "tmp_written"])
def test_resume_after_a_kill_inside_save_checkpoint(tmp_path, cohort_dir, kill_at):
    """The three states a kill inside save_checkpoint leaves; each resumes to the uninterrupted weights."""
    import shutil

    cfg = vae_cfg(cohort_dir, steps=6, checkpoint_every=2)
    train_vae(cfg, tmp_path / "whole", DistInfo(), progress=False)
    out = tmp_path / "cut"
    train_vae(cfg, out, DistInfo(), progress=False, stop_after=4)
    ckpt = out / "checkpoint"
    if kill_at == "renames":  # between os.replace(checkpoint, old) and os.replace(tmp, checkpoint)
        shutil.copytree(ckpt, out / ".checkpoint.tmp")
        os.replace(ckpt, out / ".checkpoint.old")
    elif kill_at == "old_removed":
        shutil.copytree(ckpt, out / ".checkpoint.old")
    else:  # a partial new folder
        (out / ".checkpoint.tmp").mkdir()
        (out / ".checkpoint.tmp" / "model.safetensors").write_bytes(b"cut")
    train_vae(cfg, out, DistInfo(), progress=False, resume=True)
    assert listing(out) >= {"checkpoint", "model"} and not {".checkpoint.tmp", ".checkpoint.old"} & listing(out)
    _assert_same_weights(tmp_path / "whole", out)
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # rows after the checkpoint were dropped, not duplicated


# -- full disk, read-only folder -------------------------------------------------------------------------------
def _file_size_limit(nbytes: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


@pytest.mark.parametrize("what", ["simulate-h5", "reconstruct-nifti", "report-png"])
def test_full_disk_gives_one_line_and_leaves_nothing(tmp_path, phantom_nifti, scan_h5, what):
    """Writes past RLIMIT_FSIZE fail with EFBIG, as on a full disk: HDF5, NIfTI and the report's PNG."""
    out = tmp_path / "out"
    out.mkdir()
    if what == "simulate-h5":
        proc = spawn("simulate", phantom_nifti, "-o", out / "k.h5", "--coils", 4, "--calib", 6,
                     preexec_fn=_file_size_limit(40_000))
    elif what == "reconstruct-nifti":
        proc = spawn("reconstruct", scan_h5, "-o", out / "r.nii.gz", "--method", "zero-filled",
                     preexec_fn=_file_size_limit(2_000))
    else:  # the file-object writer (atomic_open) that the report uses
        code = ("import numpy as np; from ldp_med.report import save_slices_png; "
                f"save_slices_png({str(out / 'r.png')!r}, {{'x': np.random.rand(30, 30, 30)}})")
        proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stderr=subprocess.PIPE, text=True, preexec_fn=_file_size_limit(5_000))
    _, err = proc.communicate(timeout=120)
    if what == "report-png":
        assert proc.returncode == 1 and "InputError" in err and "cannot write (File too large" in err, err
    else:
        assert proc.returncode == 2, err
        one_line_error(err, "cannot write", "file size limit")
    assert listing(out) == set()


def test_read_only_folder_gives_one_line(tmp_path, phantom_nifti):
    """Root ignores chmod, so use folders no one can write: /proc, and sysfs when mounted read-only."""
    for folder in ("/proc", "/proc/self"):
        r = run("simulate", phantom_nifti, "-o", f"{folder}/ldp-out.h5")
        assert_cli_error(r, "not writable")
    with pytest.raises(InputError, match="not writable"):
        write_bytes("/proc/ldp-out.bin", b"x")


# -- two writers ------------------------------------------------------------------------------------------------
def test_second_writer_of_the_same_output_refuses(tmp_path, scan_h5):
    """A first writer (a light process holding its claim inside a write) and a real second `reconstruct`."""
    out = tmp_path / "rec.nii.gz"
    code = "import sys; from ldp_med.io.atomic import write_bytes; write_bytes(sys.argv[1], b'first')"
    first = subprocess.Popen([sys.executable, "-c", code, str(out)], env={**os.environ, PAUSE_ENV: "60",
                             "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    wait_for_line(first, "test pause before linking")
    second = spawn("reconstruct", scan_h5, "-o", tmp_path / "." / "rec.nii.gz", "--method", "zero-filled", "--force")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    one_line_error(err, "another ldp-med process", f"pid {first.pid}")
    first.kill()
    first.wait()
    assert not out.exists() and not [p for p in listing(tmp_path) if p.startswith(".rec")]


def test_a_file_written_meanwhile_is_not_overwritten_without_force(tmp_path):
    dest = tmp_path / "x.bin"
    with pytest.raises(InputError, match="appeared while"):
        with atomic_open(dest) as fh:
            fh.write(b"mine")
            dest.write_bytes(b"theirs")  # another writer, between our checks and our link
    assert dest.read_bytes() == b"theirs" and listing(tmp_path) == {"x.bin"}


# -- memory -------------------------------------------------------------------------------------------------------
def test_reconstruction_above_available_memory_is_refused(tmp_path, scan_h5, monkeypatch):
    monkeypatch.delenv(resources.LIMIT_ENV, raising=False)
    monkeypatch.setattr(resources, "_meminfo_available", lambda: 40_000_000)
    monkeypatch.setattr(resources, "_cgroup_available", lambda: None)
    r = run("reconstruct", scan_h5, "-o", tmp_path / "r.nii.gz", "--method", "cs")
    assert_cli_error(r, scan_h5, "cs reconstruction of 4 coil(s) x 21x24x19 needs about", "0.04 GB is available")
    assert not (tmp_path / "r.nii.gz").exists()
    monkeypatch.setenv(resources.LIMIT_ENV, "8")
    assert run("reconstruct", scan_h5, "-o", tmp_path / "r.nii.gz", "--method", "zero-filled").exit_code == 0


def test_a_dicom_series_is_estimated_from_its_headers(tmp_path, monkeypatch):
    """A DICOM folder's size comes from its headers (rows x columns x files), so its memory is checked before the
    reader allocates; until session 53 a folder was never estimated."""
    import nibabel as nib
    import numpy as np

    from ldp_med.io.loaders import load_volume
    from tests.conftest import ellipsoid_phantom

    data = ellipsoid_phantom() * 300 + 5
    zooms = np.diag([1.0, 1.0, 3.0, 1.0])  # 1 x 1 x 3 mm: a thick-slice series
    nib.save(nib.Nifti1Image(data.astype(np.float32), zooms), str(tmp_path / "x.nii.gz"))
    series = tmp_path / "series"
    assert run("simulate", tmp_path / "x.nii.gz", "-o", series, "--task", "denoise").exit_code == 0
    (series / "notes.txt").write_text("not DICOM")
    shape = load_volume(series).data.shape
    found = resources.input_shape(series, "denoise", None, None)
    assert found is not None and sorted(found[0]) == sorted(shape) and found[1] == 1
    thick, _ = resources.input_shape(series, "superres", None, None)
    assert np.prod(thick) == 3 * np.prod(shape)  # the slice axis read from the spacing: factor 3
    monkeypatch.setenv(resources.LIMIT_ENV, "0.01")
    r = run("reconstruct", series, "-o", tmp_path / "d.nii.gz", "--task", "denoise", "--method", "nlm")
    assert_cli_error(r, "nlm denoise of", "needs about")


def test_prior_reconstruction_advice_names_coil_compression(tmp_path, scan_h5, monkeypatch):
    monkeypatch.setenv(resources.LIMIT_ENV, "0.01")
    r = run("reconstruct", scan_h5, "-o", tmp_path / "r.nii.gz", "--method", "prior", "--samples", 4)
    assert_cli_error(r, "prior reconstruction", "posterior.coil_energy=0.95")


def test_training_above_available_memory_is_refused(tmp_path, cohort_dir, monkeypatch):
    monkeypatch.setenv(resources.LIMIT_ENV, "0.001")
    yml = _write_config(vae_cfg(cohort_dir), tmp_path / "vae.yaml")
    r = run("train", "vae", "--config", yml, "--out", tmp_path / "t", "--device", "cpu")
    assert_cli_error(r, "VAE training (3 images", "loop.batch_size")
    assert not (tmp_path / "t").exists()


def test_memory_estimates_grow_with_size_coils_and_samples():
    small = resources.reconstruction_bytes("kspace", "cs", (64, 64, 64), 8)
    assert resources.reconstruction_bytes("kspace", "cs", (128, 64, 64), 8) > small
    assert resources.reconstruction_bytes("kspace", "cs", (64, 64, 64), 16) > 2 * small - resources.RECON_OVERHEAD
    one = resources.reconstruction_bytes("kspace", "prior", (64, 64, 64), 8, (96, 112, 96), 8, samples=1)
    assert resources.reconstruction_bytes("kspace", "prior", (64, 64, 64), 8, (96, 112, 96), 8, samples=4) > one


def test_further_posterior_samples_cost_images_not_coil_arrays():
    """Measured on a 1 mm head, 8 coils, R=4: 4.23 GB with one sample, 7.45 with eight (session 47). The estimate
    stays above both without refusing the eight on a 16 GB machine (it said 21.9 GB when every sample counted as
    the first, with its coil arrays)."""
    head = ("kspace", "prior", (182, 218, 182), 8, (96, 112, 96), 8)
    one, eight = (resources.reconstruction_bytes(*head, samples=s) / resources.GB for s in (1, 8))
    assert 4.23 < one and 7.45 < eight < 12
    image = ("denoise", "prior", (182, 218, 182), 1, (96, 112, 96), 8)
    assert resources.reconstruction_bytes(*image, samples=2) > resources.reconstruction_bytes(*image, samples=1)


#: Peak RSS (kB) of `ldp-med reconstruct` on the NLin6Asym head, Rician 5% / x2 thick slices, shipped defaults, two
#: threads (session 53, docs/reliability.md); bm4d at 1 mm was stopped at 400 s, so its peak is at least that.
MEASURED_IMAGE_PEAKS = [("denoise", "prior", 1198936, 1), ("denoise", "prior", 2333356, 2),
                        ("denoise", "noise2self", 988584, 1), ("denoise", "noise2self", 2035468, 2),
                        ("denoise", "nlm", 424524, 1), ("denoise", "nlm", 743884, 2),
                        ("denoise", "bm4d", 1222824, 1), ("denoise", "bm4d", 7444672, 2),
                        ("superres", "selfsim", 752008, 1), ("superres", "selfsim", 1886132, 2),
                        ("superres", "prior", 859184, 1), ("superres", "prior", 1922980, 2),
                        ("superres", "cubic", 403508, 1), ("superres", "cubic", 647108, 2)]


@pytest.mark.parametrize("task, method, kb, scale", MEASURED_IMAGE_PEAKS)
def test_image_task_estimates_cover_their_measured_peaks(task, method, kb, scale):
    """The estimate (above the program) covers the measured peak less 0.38 GB (cubic's whole 2 mm run, less than
    any program that ran) at 2 mm and 1 mm, and overshoots it by less than 1.2 GB. Until session 53 noise2self,
    selfsim and bm4d counted as 8 images (0.33 GB at 1 mm, against 1.66, 1.51 and over 7 GB)."""
    shape = (91 * scale, 109 * scale, (90 if task == "superres" else 91) * scale)
    model = ((96, 112, 96), 8) if method in ("prior", "dps") else (None, 0)
    estimate = resources.reconstruction_bytes(task, method, shape, 1, *model) / resources.GB
    own = kb * 1024 / resources.GB - 0.38
    assert own < estimate < own + 1.2, (estimate, own)


#: Peak RSS (GB, the program's ~0.6 GB included) of `ldp-med reconstruct` on 8-coil k-space: (shape, method, samples,
#: peak), sessions 22 and 47-48 (docs/reliability.md, "Memory").
MEASURED_KSPACE_PEAKS = [((182, 218, 182), "cs", 1, 4.61), ((182, 218, 182), "prior", 1, 4.23),
                         ((182, 218, 182), "prior", 8, 7.45), ((99, 117, 95), "prior", 1, 1.32),
                         ((99, 117, 95), "prior", 8, 2.36), ((256, 256, 256), "prior", 1, 8.52),
                         ((256, 256, 256), "cs", 1, 9.29), ((182, 218, 182), "zero-filled", 1, 3.11),
                         ((182, 218, 182), "tv", 1, 5.29), ((256, 256, 256), "zero-filled", 1, 6.74),
                         ((256, 256, 256), "tv", 1, 11.65)]


@pytest.mark.parametrize("shape, method, samples, peak", MEASURED_KSPACE_PEAKS)
def test_kspace_estimates_cover_their_measured_peaks(shape, method, samples, peak):
    """The estimate plus the 0.6 GB program covers each measured peak and overshoots it by less than 2 GB. With
    ESPIRiT's grid 5-8x smaller (session 54) the old factors left the 1 mm and 256^3 cs, zero-filled and tv peaks
    uncovered."""
    model = ((96, 112, 96), 8) if method in ("prior", "dps") else (None, 0)
    estimate = resources.reconstruction_bytes("kspace", method, shape, 8, *model, samples=samples) / resources.GB
    assert peak < estimate + 0.6 < peak + 2.0, (estimate, peak)


def test_bad_memory_limit_variable(monkeypatch):
    monkeypatch.setenv(resources.LIMIT_ENV, "lots")
    with pytest.raises(InputError, match="LDP_MED_MEMORY_LIMIT_GB"):
        resources.check_memory(1, "x", "y")


def test_check_output_probe_leaves_nothing(tmp_path):
    check_output(tmp_path / "a.nii.gz")
    assert listing(tmp_path) == set()
