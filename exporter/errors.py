"""Errors a user can cause, each carrying the exit code the CLI returns for it.

This module imports nothing from edgeport, so every layer (passes, runtimes, profiles) may raise these.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUDGET_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


class EdgeportError(Exception):
    """Base of every error edgeport raises on purpose. The message is one line: the thing and the fix."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, fix: str | None = None):
        # one line, whatever the user typed or a library said: line breaks are shown, not obeyed
        message, fix = _one_line(message), _one_line(fix) if fix else fix
        self.problem = message
        self.fix = fix
        super().__init__(f"{message}. Fix: {fix}" if fix else message)


def _one_line(text: str) -> str:
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class UsageError(EdgeportError):
    """Bad arguments: a malformed input spec, an option out of range, an unwritable output folder."""

    exit_code = EXIT_USAGE


class ModelLoadError(UsageError):
    """The model cannot be found, imported or deserialized."""


class DataError(UsageError):
    """Calibration or evaluation data that is missing, corrupt or does not match the model."""


class ExportError(UsageError):
    """The torch model cannot be exported to ONNX (an unsupported op, data-dependent control flow)."""


class ProfileError(UsageError):
    """A device profile that does not exist or does not follow the schema."""


class QuantizationError(UsageError):
    """Quantization cannot run with the given model, data and options."""


class RemoteError(UsageError):
    """A device reached over SSH could not be used: unreachable, refused, missing onnxruntime, dropped."""


class InternalError(EdgeportError):
    """A failure that is edgeport's fault, not the user's."""

    exit_code = EXIT_INTERNAL


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (terminal colours removed)."""
    import re

    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
