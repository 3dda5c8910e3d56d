"""Shared parts of the benchmark scripts: the validation-only guard of tuning, and the Markdown table with its command."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def require_validation(seeds) -> None:
    """Exit with a one-line message unless every seed is a synthetic *validation* subject (tuning never sees test)."""
    from ldp_med.data import synthetic

    for seed in seeds:
        if synthetic.split_of(seed) != "val":
            raise SystemExit(f"seed {seed} is not a validation subject")


def emit(table: str | list[str], out: str | None) -> None:
    """Print ``table`` (text or lines); with ``out``, write it followed by the exact command that made it."""
    text = table if isinstance(table, str) else "\n".join(table)
    print(text)
    if out:
        threads = os.environ.get("OMP_NUM_THREADS")
        cmd = ("OMP_NUM_THREADS=" + threads + " " if threads else "") + "python " + shlex.join(sys.argv)
        Path(out).write_text(f"{text}\n\nProduced by: `{cmd}`\n")
