"""The command line's import hook: packages hidden only while the target package first executes."""

import sys

import pytest

from ldp_med.startup import HideWhileImporting, install


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """``fakemonai`` optionally imports ``fakeheavy`` (as MONAI's optional_import does); both on sys.path."""
    (tmp_path / "fakemonai").mkdir()
    (tmp_path / "fakemonai" / "__init__.py").write_text(
        "try:\n    import fakeheavy\n    HAS_HEAVY = True\nexcept ImportError:\n    HAS_HEAVY = False\n")
    (tmp_path / "fakeheavy.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("fakemonai", "fakeheavy"):
        sys.modules.pop(name, None)
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, HideWhileImporting)]


def test_without_the_hook_the_optional_package_is_imported(fake_packages):
    import fakemonai

    assert fakemonai.HAS_HEAVY and "fakeheavy" in sys.modules


def test_hook_hides_the_package_only_during_the_first_import(fake_packages):
    assert install("fakemonai", ("fakeheavy",))
    assert not install("fakemonai", ("fakeheavy",))  # one hook per target
    import fakemonai

    assert fakemonai.HAS_HEAVY is False
    assert "fakeheavy" not in sys.modules
    assert not any(isinstance(f, HideWhileImporting) for f in sys.meta_path)  # one-shot
    import fakeheavy  # importable again afterwards

    assert fakeheavy.VALUE == 42


def test_already_imported_target_is_left_alone(fake_packages):
    import fakemonai  # noqa: F401

    assert install("fakemonai", ("fakeheavy",)) is False
    assert not any(isinstance(f, HideWhileImporting) for f in sys.meta_path)


def test_already_imported_hidden_package_stays(fake_packages):
    import fakeheavy  # noqa: F401

    install("fakemonai", ("fakeheavy",))
    import fakemonai

    assert fakemonai.HAS_HEAVY and sys.modules["fakeheavy"] is not None


def _run(code: str, env: dict) -> str:
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | env
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def _thp_mode() -> str:
    from pathlib import Path

    p = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return p.read_text().split("[")[1].split("]")[0] if p.is_file() else "absent"


@pytest.mark.skipif(_thp_mode() != "madvise", reason="huge pages only on request: the kernel's THP mode is madvise")
@pytest.mark.parametrize("user", [None, "0"])
def test_the_command_line_asks_torch_for_huge_pages_unless_the_user_said_otherwise(user):
    """``ldp-med`` sets PyTorch's THP switch before torch loads, and a 256 MB tensor then lies on huge pages; a value
    the user set is kept (and with 0, none)."""
    code = ("import os, sys\nsys.argv = ['ldp-med', '--version']\nfrom ldp_med import cli\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\nimport torch\nt = torch.ones(2**26)\n"
            "kb = [int(line.split()[1]) for line in open('/proc/self/smaps_rollup') if line.startswith('AnonHuge')]\n"
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), kb[0] >= 2**17)")
    out = _run(code, {} if user is None else {"THP_MEM_ALLOC_ENABLE": user}).split()[-2:]
    assert out == (["1", "True"] if user is None else ["0", "False"])
