"""Errors raised at the boundary; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import importlib
import os
from types import ModuleType


class LdpError(Exception):
    """Base class of every error ldp-med raises on purpose (bad input, bad config, bad model)."""


class InputError(LdpError):
    """A file or argument is unusable; the message names the file and the problem.

    Args:
        path: the offending file or folder (None when the problem is not tied to a file).
        problem: what is wrong, in a few words.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages may span several), or its type's name when empty."""
    return " ".join(str(exc).split()) or type(exc).__name__


class ConfigError(LdpError):
    """A config file, override or model folder does not match the expected schema."""


class MissingDependencyError(LdpError, ImportError):
    """An optional dependency needed for a feature is not installed, or is installed but does not import.

    Raised by :func:`require`; the message is one line naming the feature and the extra to install.
    """


def missing_message(feature: str, extra: str) -> str:
    """The one-line message of a missing extra, e.g. ``the eval extra is required for Poisson masks: pip ...``."""
    return f"the {extra} extra is required for {feature}: pip install 'ldp-med[{extra}]'"


def require(*modules: str, feature: str, extra: str = "eval", broken_hint: str = "") -> ModuleType:
    """Import optional modules lazily, or raise a one-line :class:`MissingDependencyError`.

    Args:
        *modules: dotted module names to import, in order (e.g. ``"sigpy", "sigpy.mri.app"``).
        feature: what needs them, in a few words (e.g. ``"Poisson masks"``); named in the message.
        extra: the optional-dependency group of ``ldp-med`` that provides them (``eval``, ``text``).
        broken_hint: appended to the message when the extra is installed but fails to import.

    Returns:
        The module named first.

    Raises:
        MissingDependencyError: a module (or one it imports) is not installed, with the message of
            :func:`missing_message`; or importing raised anything else, with "the <extra> extra is
            installed but does not import (<first line of the error>)[; <broken_hint>]".
    """
    if not modules:
        raise ValueError("require() needs at least one module name")
    try:
        loaded = [importlib.import_module(name) for name in modules]
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(missing_message(feature, extra)) from exc
    except Exception as exc:  # e.g. a RuntimeError from a mismatched binary dependency during import
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        hint = f"; {broken_hint}" if broken_hint else ""
        raise MissingDependencyError(f"the {extra} extra is installed but does not import ({first}){hint}") from exc
    return loaded[0]
