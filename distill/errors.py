"""Errors a user can act on.

Every error caused by bad input names the file, the row and the field, so that the command
line can print one clear line instead of a traceback (see `distill.cli.main_guard`).
"""

from __future__ import annotations


class DistillError(Exception):
    """Base class for errors that the command line reports as one line and exit code 2."""


class InputError(DistillError):
    """Bad input data: names the file, the (1-based) row and the field at fault."""

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
