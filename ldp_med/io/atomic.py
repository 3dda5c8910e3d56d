"""Atomic output writing: check the destination, write a temporary file beside it, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ldp_med.errors import InputError


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Check that ``path`` can be written: its folder exists and is writable, and it is new or ``force``.

    Raises:
        InputError: naming ``path`` when the folder is missing or unwritable, or the file exists.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    try:  # os.access says yes to root even on read-only file systems: try for real
        fd, probe = tempfile.mkstemp(prefix=".ldp-write-test.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(path, f"output folder {parent} is not writable ({exc.strerror})") from None
    if path.exists() and not force:
        raise InputError(path, "output exists; use --force to overwrite")
    if path.is_dir():
        raise InputError(path, "output is a folder, expected a file")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success rename it onto ``path``.

    The temporary name keeps the destination's suffixes (``.nii.gz``, ``.h5``) so that writers
    that infer the format from the name work. On error the temporary file is removed and the
    destination is left as it was.
    """
    path = check_output(path, force)
    suffix = "".join(path.suffixes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as exc:
        raise InputError(path, f"cannot write in folder {path.parent} ({exc.strerror})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
