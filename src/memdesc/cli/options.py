"""Option checks shared by sub-commands, done before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from memdesc.errors import InputError
from memdesc.stages import STAGE_IDS, Stage, parse_stages

#: Kernel interfaces an output must never land in (root passes every os.access() test there).
KERNEL_FILESYSTEMS = ("/proc", "/sys")


def stages_option(spec: str) -> list[Stage]:
    """The stages named by ``--stages`` (``all`` or ``a,b``), in Path order."""
    try:
        stages = parse_stages(spec)
    except ValueError as e:
        raise InputError(f"--stages: {e}") from None
    if not stages:
        raise InputError(f"--stages {spec!r} names no stage; stages are: {', '.join(STAGE_IDS)}")
    return stages


def check_output(path: str | None, what: str) -> None:
    """Fail before any work when ``--what PATH`` cannot be written as a file (``-`` is stdout):
    under /proc or /sys, a folder, in a folder that does not exist or is not writable."""
    if path is None or path == "-":
        return
    p = Path(path)
    real = os.path.realpath(p)
    if any(real == k or real.startswith(k + "/") for k in KERNEL_FILESYSTEMS):
        raise InputError(f"--{what} {path}: memdesc never writes its outputs under "
                         f"{', '.join(KERNEL_FILESYSTEMS)}; give a file elsewhere")
    if p.is_dir():
        raise InputError(f"--{what} {path} is a folder; give a file name")
    # The folder must exist: memdesc creates nothing the user did not ask for.
    parent = p.absolute().parent
    if not parent.exists():
        raise InputError(f"--{what} {path}: folder {parent} does not exist; create it or "
                         f"give a file in an existing folder")
    if not parent.is_dir():
        raise InputError(f"--{what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise InputError(f"--{what} {path}: folder {parent} is not writable")
