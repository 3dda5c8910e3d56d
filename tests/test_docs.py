"""Runnable examples in the README and docs/: every ```python block runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = [(p, i, code) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), re.S))]


def test_docs_have_python_examples():
    assert any(p.name == "architecture.md" for p, _, _ in BLOCKS)


@pytest.mark.parametrize("path,index,code", BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in BLOCKS])
def test_python_example_runs(path, index, code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{path.name}[{index}]", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.strip(), "an example should print what it shows"
