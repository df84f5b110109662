"""Errors a user can act on. The CLI prints ``memdesc: <message>`` and exits non-zero."""


class MemdescError(Exception):
    """A one-line, actionable problem with the input or the environment (exit status 2)."""

    exit_status = 2


class InputError(MemdescError):
    """Input data is missing, truncated, corrupt or in a format we do not read."""


class PermissionProblem(MemdescError):
    """The kernel interface exists but this user may not read (or write) it."""
