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


#: Command lines that start with ``ldp-med`` (after ``VAR=value`` settings and ``/usr/bin/time``'s options), in the
#: README's and docs' code blocks (fenced or indented): what users copy.
_CLI_LINE = re.compile(r'^(?:```\w*\n)?\s*(?:\w+=\S+\s+)*(?:/usr/bin/time(?:\s+-\w+(?:\s+"[^"]*")?)*\s+)?'
                       r'(ldp-med\s.*)$')
CLI_LINES = [(p, n, m.group(1)) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if (line.startswith(("ldp-med ", "    ")) or "ldp-med " in line[:40]) and (m := _CLI_LINE.match(line))]


def test_docs_have_command_lines():
    assert sum(p.name == "README.md" for p, _, _ in CLI_LINES) >= 15
    assert {"simulate", "reconstruct", "evaluate", "autoencode", "generate", "info", "train"} <= {  # demo: test_demo
        line.split()[1] for _, _, line in CLI_LINES}


@pytest.mark.parametrize("path,number,line", CLI_LINES, ids=[f"{p.name}:{n}" for p, n, _ in CLI_LINES])
def test_command_line_in_the_docs_parses(path, number, line, monkeypatch):
    """Every documented ``ldp-med`` command line names a command and options that exist, with values they accept
    (click parses it; the commands' bodies are replaced, so nothing runs), and ``reconstruct``'s ``--set`` fields
    exist in its config."""
    import shlex

    from click.testing import CliRunner

    from ldp_med.cli import cli

    def stub(command):
        monkeypatch.setattr(command, "callback", lambda *args, **kwargs: None)
        for sub in getattr(command, "commands", {}).values():
            stub(sub)

    stub(cli)
    args = shlex.split(re.split(r"\s(?:&&|\||>|2>)\s", line)[0], comments=True)[1:]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, f"{path.name}:{number}: {line}\n{result.output}"
    if args[0] == "reconstruct":  # and its --set fields exist, with values they accept
        from ldp_med.config import ReconstructConfig, load_config

        load_config(ReconstructConfig, None, [v for k, v in zip(args, args[1:]) if k == "--set"])
