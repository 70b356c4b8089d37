"""Errors that the CLI turns into exit codes: 2 for usage and configuration, 1 at run time."""

from __future__ import annotations


class CnmtError(Exception):
    """Base class of every error C-NMT raises on purpose."""

    exit_code = 1


class ConfigError(CnmtError):
    """A configuration or usage problem: the message names the file, key, value and the fix."""

    exit_code = 2


class CnmtRuntimeError(CnmtError):
    """Something failed while running a valid request (a model, a server, a device)."""

    exit_code = 1
