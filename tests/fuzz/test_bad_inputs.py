"""Every generated bad input, through the real CLI: exit code 2, one line naming the file, nothing written.

CI runs a fixed representative 50 of the (kind x field x value) corpus plus a few derandomized hypothesis
draws; ``-m slow`` runs every case against every command that reads its kind, and thousands of
hypothesis-drawn header values, truncation offsets and corrupted bytes (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldp_med.cli import cli
from tests.fuzz.corpus import (
    KINDS, KSPACE_COMMANDS, REFERENCE_COMMAND, VOLUME_COMMANDS, Case, Invocation, _nifti_header, all_cases, bases,
    build, ci_sample, commands_for, nifti_bytes, phantom,
)

CI = settings(max_examples=12, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=6000, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="session")
def base_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-bases")
    bases(str(root))
    return root


def snapshot(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a folder (by relative path)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def leftovers(folder: Path, inv: Invocation, before: set[str]) -> list[str]:
    """Files that appeared in the case folder (outside the input) or anything in the output folder."""
    now = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    return sorted(now - before) + [p.name for p in inv.out_dir.iterdir()]


@contextlib.contextmanager
def raw_stderr():
    """Capture what bypasses ``sys.stderr`` (library loggers bound to the real stream, C libraries): fd 2."""
    captured: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode(errors="replace"))


def assert_rejected(inv: Invocation, folder: Path) -> None:
    """Run ``inv`` in-process and check the bad-input contract."""
    before_bytes = snapshot(inv.bad)
    before_names = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    with raw_stderr() as raw:
        result = CliRunner().invoke(cli, list(inv.args))
    err = result.stderr + raw[0]
    context = f"{' '.join(inv.args)}\nexit {result.exit_code}\nstderr: {err!r}\nexception: {result.exception!r}"
    assert result.exit_code == 2, context
    lines = err.strip().splitlines()
    assert len(lines) == 1, context
    assert str(inv.bad) in lines[0], context
    assert f"{inv.bad}: {inv.bad}:" not in lines[0], f"the input named twice\n{context}"
    assert "Traceback" not in result.output + err, context
    assert snapshot(inv.bad) == before_bytes, f"input changed\n{context}"
    assert not leftovers(folder, inv, before_names), f"left behind {leftovers(folder, inv, before_names)}\n{context}"


def run_case(case: Case, base_root: Path, command: int = 0) -> None:
    with tempfile.TemporaryDirectory(prefix="ldp-fuzz-") as tmp:
        folder = Path(tmp) / "case"
        assert_rejected(build(case, folder, base_root, command), folder)


def test_corpus_size_and_structure():
    cases = all_cases()
    assert len(set(cases)) == len(cases) >= 300
    assert {c.kind for c in ci_sample()} == set(KINDS) and len(ci_sample()) == 50


def test_good_inputs_pass_every_command(base_root, tmp_path):
    """The positive control: every command accepts the valid base input the corpus corrupts."""
    paths = bases(str(base_root))
    runs = [(t, paths[kind]) for t in VOLUME_COMMANDS for kind in ("nifti", "mgz", "minc")]
    runs += [(t, paths["kspace"]) for t in KSPACE_COMMANDS]
    for template, good_input in runs + [(REFERENCE_COMMAND, paths["kspace"])]:
        out = tmp_path / "out"
        out.mkdir()
        fill = {"bad": str(good_input), "good": str(paths["nifti"]), "out": str(out), "model": str(paths["model"])}
        args = [a.format(**fill) for a in template]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, (args, result.output, result.stderr, result.exception)
        shutil.rmtree(out)


@pytest.mark.parametrize("index,case", list(enumerate(ci_sample(50))), ids=lambda v: v.id if isinstance(v, Case) else "")
def test_representative_bad_input_is_rejected(index, case, base_root):
    run_case(case, base_root, command=index)


# ------------------------------------------------------------------------------------ drawn values

def _header_case(field: str, value, gz: bool, folder: Path) -> Path:
    hdr = _nifti_header()
    raw = hdr.structarr
    if field.startswith("dim"):
        raw["dim"][int(field[3])] = value
    elif field == "datatype":
        raw["datatype"] = value
    else:
        raw[field] = value
    data = nifti_bytes(hdr, phantom())
    path = folder / ("bad.nii.gz" if gz else "bad.nii")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


# dim values that no data in the base file (9 x 12 x 10, int16) can satisfy: too small or beyond the data.
_BAD_DIM = st.one_of(st.integers(-32768, 6), st.integers(13, 32767))
_BAD_VOX_OFFSET = st.one_of(st.integers(-2**31, 351), st.integers(353, 2**31 - 1))
# NIfTI datatype codes whose item size differs from int16 or that are not scalar reals (plus unknown codes).
_BAD_DATATYPE = st.one_of(st.sampled_from([0, 1, 8, 16, 32, 64, 128, 768, 1024, 1280, 1536, 1792, 2048, 2304]),
                          st.integers(-32768, 32767).filter(lambda c: c not in (2, 4, 256, 512, 8, 16, 32, 64, 128,
                                                                              768, 1024, 1280, 1536, 1792, 2048, 2304)))
_HEADER_FIELDS = st.one_of(
    st.tuples(st.sampled_from(["dim1", "dim2", "dim3"]), _BAD_DIM),
    st.tuples(st.just("vox_offset"), _BAD_VOX_OFFSET),
    st.tuples(st.just("datatype"), _BAD_DATATYPE),
    # scl_slope 0 or NaN means unscaled (valid); with the base's slope 1 any non-finite intercept is corrupt
    st.tuples(st.just("scl_slope"), st.sampled_from([float("inf"), -float("inf")])),
    st.tuples(st.just("scl_inter"), st.sampled_from([float("nan"), float("inf"), -float("inf")])),
    st.tuples(st.sampled_from(["qform_code", "sform_code"]), st.one_of(st.integers(-32768, -1), st.integers(6, 32767))),
)


def _run_drawn(write, base_root: Path, command: int, kind: str = "nifti") -> None:
    """Write a drawn bad input with ``write(folder)`` and run the ``command``-th command for its ``kind``."""
    with tempfile.TemporaryDirectory(prefix="ldp-fuzz-") as tmp:
        folder = Path(tmp) / "case"
        folder.mkdir()
        bad = write(folder)
        out = folder / "out"
        out.mkdir()
        paths = bases(str(base_root))
        options = commands_for(Case(kind, "drawn", 0))
        fill = {"bad": str(bad), "good": str(paths["nifti"]), "out": str(out), "model": str(paths["model"])}
        template = options[command % len(options)]
        assert_rejected(Invocation(bad, tuple(a.format(**fill) for a in template), out), folder)


def _truncated(raw: bytes, name: str, at: int):
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(raw[: at % max(len(raw), 1)])
        return path
    return write


def _flipped(raw: bytes, name: str, at: int, xor: int):
    def write(folder: Path) -> Path:
        data = bytearray(raw)
        data[10 + at % (len(raw) - 10)] ^= xor
        path = folder / name
        path.write_bytes(bytes(data))
        return path
    return write


def _good_gz() -> bytes:
    return gzip.compress(nifti_bytes(_nifti_header(), phantom()), mtime=0)


def _check_header(base_root, field_value, gz, command):
    field, value = field_value
    _run_drawn(lambda folder: _header_case(field, value, gz, folder), base_root, command)


def _check_truncated_gzip(base_root, at, command):
    _run_drawn(_truncated(_good_gz(), "bad.nii.gz", at), base_root, command)


def _check_flipped_gzip(base_root, at, xor, command):
    _run_drawn(_flipped(_good_gz(), "bad.nii.gz", at, xor), base_root, command)


def _check_truncated_h5(base_root, at, command):
    raw = bases(str(base_root))["kspace"].read_bytes()
    _run_drawn(_truncated(raw, "bad.h5", at), base_root, command, "kspace")


def _check_truncated_dicom_slice(base_root, at, command):
    """A middle slice of the series cut at byte ``at``: corrupt, without pixels, or a gap in the series."""
    def write(folder: Path) -> Path:
        series = shutil.copytree(bases(str(base_root))["dicom"], folder / "series")
        target = sorted(series.iterdir())[4]
        raw = target.read_bytes()
        target.write_bytes(raw[: at % len(raw)])
        return series
    _run_drawn(write, base_root, command, "dicom")


def _check_truncated_weights(base_root, at, name):
    def write(folder: Path) -> Path:
        model = shutil.copytree(bases(str(base_root))["model"], folder / "model")
        raw = (model / name).read_bytes()
        (model / name).write_bytes(raw[: at % len(raw)])
        return model
    _run_drawn(write, base_root, 0, "model")


#: One drawn bad input: (checker, its arguments after ``base_root``); every kind of drawn corruption in one strategy.
DRAWN = st.one_of(
    st.tuples(st.just(_check_header), _HEADER_FIELDS, st.booleans(), st.integers(0, 7)),
    st.tuples(st.just(_check_truncated_gzip), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just(_check_flipped_gzip), st.integers(0, 10**6), st.integers(1, 255), st.integers(0, 7)),
    st.tuples(st.just(_check_truncated_h5), st.integers(0, 10**7), st.integers(0, 1)),
    st.tuples(st.just(_check_truncated_dicom_slice), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just(_check_truncated_weights), st.integers(0, 10**7),
              st.sampled_from(["vae.safetensors", "extras.safetensors", "config.json"])),
)


@CI
@given(drawn=DRAWN)
def test_drawn_bad_inputs_ci(base_root, drawn):
    check, *args = drawn
    check(base_root, *args)


# ----------------------------------------------------------------------------------------- the long run

@pytest.mark.slow
def test_every_case_against_every_command(base_root):
    """Each (kind, field, value) through each command that reads its kind."""
    count = 0
    for case in all_cases():
        for command in range(len(commands_for(case))):
            run_case(case, base_root, command)
            count += 1
    print(f"\nexhaustive: {len(all_cases())} cases, {count} invocations, all rejected")


@pytest.mark.slow
@SLOW
@given(drawn=DRAWN)
def test_drawn_bad_inputs(base_root, drawn):
    check, *args = drawn
    check(base_root, *args)
