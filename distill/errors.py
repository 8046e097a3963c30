"""Errors a user can act on.

Every error caused by bad input names the file, the row and the field, so that the command
line can print one clear line instead of a traceback (see `distill.cli.main_guard`).

Each class has a `reason`: the short tag a failed stage's MLflow run carries
(`distill.failure_reason`), so runs can be searched by why they failed without reading
exception text (`failure_reason`).
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class for errors that the command line reports as one line and exit code 2."""

    reason = "error"


class InputError(DistillError):
    """Bad input data: names the file, the (1-based) row and the field at fault."""

    reason = "input_error"

    def __init__(self, path, message: str, row: int | None = None, field: str | None = None):
        self.path = str(path)
        self.row = row
        self.field = field
        self.message = message
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class ConfigError(DistillError):
    """A parameter that cannot work (unknown format, missing file, bad combination)."""

    reason = "config_error"


class StageFailed(DistillError):
    """The stage ran but could not do its work: too many requests without a usable answer, a
    permanent error from a provider, a circuit breaker. What it paid for is kept (the response
    cache), so a rerun resumes; `reason` is the short tag of the cause (failure_rate,
    permanent_error, circuit_breaker)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def failure_reason(exc: BaseException) -> str:
    """The short tag that says why a stage failed: the error's own reason for a DistillError,
    `interrupted` for Ctrl-C, `unexpected_error` for anything else (a bug: its text is a
    traceback, not a reason)."""
    if isinstance(exc, DistillError):
        return str(getattr(exc, "reason", None) or DistillError.reason)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "unexpected_error"
