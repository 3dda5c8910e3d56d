"""Shared tail of the benchmark scripts: print a Markdown table and write it, with its command, to --out."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def emit(table: str | list[str], out: str | None) -> None:
    """Print ``table`` (text or lines); with ``out``, write it followed by the exact command that made it."""
    text = table if isinstance(table, str) else "\n".join(table)
    print(text)
    if out:
        threads = os.environ.get("OMP_NUM_THREADS")
        cmd = ("OMP_NUM_THREADS=" + threads + " " if threads else "") + "python " + shlex.join(sys.argv)
        Path(out).write_text(f"{text}\n\nProduced by: `{cmd}`\n")
