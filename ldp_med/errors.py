"""Errors raised at the boundary; the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

import os


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


class ConfigError(LdpError):
    """A config file, override or model folder does not match the expected schema."""
