"""Output files that appear whole or not at all: checks before work, unnamed temporary files, claims.

- :func:`check_output` refuses, before any work, an output that exists (without ``force``), lies in a
  missing or unwritable folder, or is one of the inputs (the same file by another spelling, a symlink
  or a hard link, or a file inside an input folder such as a DICOM series). It also *claims* the
  output for this process, so that a second process writing the same file refuses with one line.
- :func:`atomic_folder` does the same for an output that is a folder of files (a DICOM series): they are written
  into a hidden folder beside the destination, which is renamed into place when complete; ``--force`` replaces only a
  folder that holds nothing but ``.dcm`` files.
- :func:`atomic_open` gives a file object backed by an unnamed ``O_TMPFILE`` inode in the destination
  folder and links it into place at the end: a ``kill -9`` at any moment leaves no partial file,
  because until the link the data has no name. Without ``O_TMPFILE`` (not Linux, or a file system
  without it) it falls back to a named temporary file, renamed at the end and removed on errors.
  A ``kill -9`` during the fallback leaves ``.<name>.<pid>.<random>.tmp<suffix>``, which the next check of
  that output removes.

Errors of the file system (full disk, ``RLIMIT_FSIZE``, read-only folder) become one-line
:class:`~ldp_med.errors.InputError` naming the destination, with nothing left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ldp_med.errors import InputError

#: Test hook: seconds to pause after the data is written and before it is linked into place,
#: announced on stderr, so that tests can ``kill -9`` a process in the middle of a write.
PAUSE_ENV = "LDP_MED_TEST_WRITE_PAUSE"

_claims: dict[str, socket.socket] = {}
_APPEARED = "output appeared while this one was written; use --force to overwrite"


def _real(path: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(path))


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is an input, or lies inside an input folder.

    Compares resolved paths (symlinks, ``..``, relative spellings) and, where both exist, inodes
    (``os.path.samefile``, which also catches hard links).

    Raises:
        InputError: naming ``path`` and the input it would overwrite.
    """
    out = _real(path)
    for inp in inputs:
        real = _real(inp)
        same = out == real
        if not same and os.path.exists(path) and os.path.exists(inp):
            with contextlib.suppress(OSError):
                same = os.path.samefile(path, inp)
        if same:
            raise InputError(path, f"output is the input {inp}; choose another output")
        if os.path.isdir(real) and out.startswith(real.rstrip(os.sep) + os.sep):
            raise InputError(path, f"output lies inside the input folder {inp}; choose another output")


def _probe_writable(path: Path, parent: Path) -> None:
    """Create and drop a file in ``parent`` (``os.access`` says yes to root even on read-only mounts)."""
    try:
        fd = _open_unnamed(parent)
        if fd is None:
            probe = _temp_name(path)
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.unlink(probe)
        os.close(fd)
    except OSError as exc:
        raise InputError(path, f"output folder {parent} is not writable ({exc.strerror})") from None


def check_output(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = (),
                 folder: bool = False) -> Path:
    """Check that ``path`` can be written, before any work, and claim it for this process.

    Args:
        path: the destination file (or folder, with ``folder``).
        force: allow replacing an existing file (never an input); with ``folder``, an existing folder that holds
            nothing but ``.dcm`` files (a DICOM series) and no input.
        inputs: the files or folders the command reads; the output may not be or lie in one.
        folder: the output is a folder of files written whole (:func:`atomic_folder`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: naming ``path`` when the folder is missing or unwritable, the output exists without ``force``,
            it is a folder where a file is expected (or the reverse), it is or holds an input, or another process is
            writing it.
    """
    path = Path(path)
    check_not_input(path, inputs)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(path, f"output folder {parent} does not exist")
    _probe_writable(path, parent)
    if folder:
        _check_replaceable_folder(path, force, inputs)
    elif path.is_dir():
        raise InputError(path, "output is a folder, expected a file")
    if path.exists() and not force:
        raise InputError(path, "output exists; use --force to overwrite")
    claim(path)
    _remove_stale_temporaries(path)
    return path


def _check_replaceable_folder(path: Path, force: bool, inputs: Iterable[str | os.PathLike]) -> None:
    """A folder output may replace (with ``force``) only a folder of ``.dcm`` files that holds no input."""
    if path.exists() and not path.is_dir():
        raise InputError(path, "output exists and is a file; a DICOM series is written to a folder")
    if path.is_dir() and not force:
        raise InputError(path, "output exists (a folder); use --force to replace it with this DICOM series")
    if not path.is_dir():
        return
    real = _real(path).rstrip(os.sep) + os.sep
    for inp in inputs:
        if _real(inp).startswith(real):
            raise InputError(path, f"output folder holds the input {inp}; choose another output")
    for entry in os.scandir(path):
        if not (entry.is_file(follow_symlinks=False) and entry.name.lower().endswith(".dcm")):
            raise InputError(path, f"output folder holds {entry.name}, not only .dcm files; --force replaces only "
                                   "a DICOM series folder")


# -- claims: one writer per output ------------------------------------------------------------------
def _claim_address(path: str | os.PathLike) -> bytes:
    import hashlib

    return b"\0ldp-med-output:" + hashlib.sha256(_real(path).encode()).hexdigest()[:40].encode()


def claim(path: str | os.PathLike) -> None:
    """Claim ``path`` for this process until :func:`release` or exit (a ``kill -9`` releases it too).

    A claim is a listening Unix socket in the abstract namespace named after the resolved path: the
    kernel frees it when the process dies, and no file is created. Where abstract sockets do not
    exist (not Linux) claims are skipped; the no-clobber link at the end still refuses a second
    writer without ``--force``.

    Raises:
        InputError: another live process holds the claim (naming its pid when known).
    """
    key = _real(path)
    if key in _claims or not sys.platform.startswith("linux"):
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_claim_address(path))
        sock.listen(8)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            return
        who = _claim_holder(path)
        raise InputError(path, f"another ldp-med process{who} is writing this output; wait for it or choose another") from None
    _claims[key] = sock


def _claim_holder(path: str | os.PathLike) -> str:
    """`` (pid N)`` of the process holding the claim on ``path``, or "" when it cannot be asked."""
    import struct

    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        s.connect(_claim_address(path))
        pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        return f" (pid {pid})"
    return ""


def release(path: str | os.PathLike) -> None:
    """Drop this process's claim on ``path`` (after its file is written)."""
    sock = _claims.pop(_real(path), None)
    if sock is not None:
        sock.close()


# -- writing ------------------------------------------------------------------------------------------
def _open_unnamed(folder: Path) -> int | None:
    """A read-write fd of a new nameless file in ``folder`` (``O_TMPFILE``), or None where unsupported."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):  # linking it into place needs /proc
        return None
    try:
        return os.open(folder, flag | os.O_RDWR, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # the file system (or an old kernel) has no O_TMPFILE: use a named file
        raise


def _temp_name(path: Path) -> Path:
    suffix = "".join(path.suffixes)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp*`` files (and folders) of ``path`` left by killed processes (pid no longer
    alive)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent if str(path.parent) else "."):
            m = pattern.match(entry.name)
            if m and not _alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):  # a folder output's (atomic_folder)
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _test_pause(path: Path) -> None:
    seconds = float(os.environ.get(PAUSE_ENV, "0") or 0)
    if seconds > 0:
        print(f"ldp-med: test pause before linking {path}", file=sys.stderr, flush=True)
        time.sleep(seconds)


def _runtime_write_error(path: Path, exc: RuntimeError) -> Exception:
    """h5py reports a failed write (full disk) as a RuntimeError naming the errno: make it one line.

    Other RuntimeErrors are returned unchanged (to be re-raised as they were).
    """
    m = re.search(r"errno = (\d+)", str(exc))
    return _write_error(path, OSError(int(m.group(1)), os.strerror(int(m.group(1))))) if m else exc


def _write_error(path: Path, exc: OSError) -> InputError:
    text = str(exc).strip()
    reason = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    if exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        reason = f"{exc.strerror}: the disk or the file size limit is full"
    return InputError(path, f"cannot write ({reason}); nothing was written")


def _link_fd(fd: int, dest: Path) -> None:
    """``linkat(AT_FDCWD, "/proc/self/fd/<fd>", dir, name, AT_SYMLINK_FOLLOW)``.

    The folder is passed as a descriptor because ``os.link`` calls plain ``link()`` (which does not
    follow the magic link) unless a ``*_dir_fd`` is given.
    """
    folder = os.open(dest.parent if str(dest.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", dest.name, dst_dir_fd=folder, follow_symlinks=True)
    finally:
        os.close(folder)


def _link_into_place(fd: int, path: Path, force: bool) -> None:
    """Give the nameless file ``fd`` the name ``path``: no-clobber link, or link + rename with ``force``."""
    if not force:
        try:
            _link_fd(fd, path)
        except FileExistsError:
            raise InputError(path, _APPEARED) from None
        return
    tmp = _temp_name(path)
    _link_fd(fd, tmp)
    try:
        os.replace(tmp, path)  # the only moment a name other than ``path`` exists: one rename
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[BinaryIO]:
    """Yield a binary file object (read-write, seekable) whose content becomes ``path`` on success.

    Writers that accept file objects (``h5py.File(f, "w")``, ``fig.savefig(f)``, ``f.write(bytes)``)
    use it directly; the data has no name in the file system until it is complete and linked.

    Raises:
        InputError: as :func:`check_output`, or the write failed (full disk, file size limit,
            read-only folder); the destination is then unchanged and nothing is left behind.
    """
    path = check_output(path, force, inputs)
    with _write_errors(path):
        fd = _open_unnamed(path.parent)
        if fd is None:
            with _named_fallback(path, force) as fh:
                yield fh
            return
        with os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            _test_pause(path)
            _link_into_place(fh.fileno(), path, force)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, force: bool = False,
                  inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a new empty hidden folder beside ``path``; the files written into it become the folder ``path`` on
    success (one rename: the output appears whole or not at all, and a killed process leaves a hidden folder that the
    next check of that output removes). With ``force`` an existing ``path`` (a folder of ``.dcm`` files,
    :func:`check_output`) is replaced.

    Raises:
        InputError: as :func:`check_output` (``folder=True``), or the write failed (full disk, read-only folder); the
            destination is then unchanged and nothing is left behind.
    """
    path = check_output(path, force, inputs, folder=True)
    tmp = _temp_name(path)
    with _write_errors(path):
        os.mkdir(tmp)
        try:
            yield tmp
            for entry in os.scandir(tmp):
                fd = os.open(entry.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            _test_pause(path)
            if path.exists():
                if not force:
                    raise InputError(path, _APPEARED)
                old = _temp_name(path)
                os.rename(path, old)  # the only moment without ``path``: two renames, the old folder then removed
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """Turn a failed write to ``path`` into one line (:func:`_write_error`); release its claim either way."""
    try:
        yield
    except OSError as exc:
        raise _write_error(path, exc) from None
    except RuntimeError as exc:
        raise _runtime_write_error(path, exc) from None
    finally:
        release(path)


@contextlib.contextmanager
def _named_fallback(path: Path, force: bool) -> Iterator[BinaryIO]:
    """A named temporary file beside ``path``, moved into place at the end and removed on errors."""
    tmp = _temp_name(path)
    try:
        with open(tmp, "x+b") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _test_pause(path)
        _move_into_place(tmp, path, force)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _move_into_place(tmp: Path, path: Path, force: bool) -> None:
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # no-clobber: fails if another process wrote ``path`` meanwhile
    except FileExistsError:
        raise InputError(path, _APPEARED) from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise InputError(path, _APPEARED) from None
        os.replace(tmp, path)


def write_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_open`; returns ``path``."""
    with atomic_open(path, force) as fh:
        fh.write(data)
    return Path(path)
