"""Find (or mount) tracefs and manage a private tracing instance in it.

Only ``instances/<name>`` that we create is ever written; the top-level buffer, its events,
options and sizes are left alone. A tracefs we mount ourselves goes on a private temporary
mountpoint and is unmounted when we are done, so the machine is left as we found it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
import time
from pathlib import Path

from memdesc.errors import InputError, PermissionProblem

MOUNTS = Path("/proc/mounts")
MNT_DETACH = 2          # [S] include/uapi/linux/mount.h (umount2 flag)


def _unescape(field: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field


def find_tracefs(mounts: Path = MOUNTS) -> Path | None:
    """The first usable tracefs mountpoint listed in ``mounts`` (None if none)."""
    try:
        text = mounts.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "tracefs":
            path = Path(_unescape(parts[1]))
            if (path / "instances").is_dir():
                return path
    return None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tracefs() -> Path:
    """Mount tracefs on a new private temporary folder and return it."""
    target = Path(tempfile.mkdtemp(prefix="memdesc-tracefs-"))
    if _libc().mount(b"nodev", os.fsencode(target), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        target.rmdir()
        if err in (errno.EPERM, errno.EACCES):
            raise PermissionProblem("tracefs is not mounted and mounting it needs root "
                                    "(run memdesc record as root)")
        raise InputError(f"cannot mount tracefs: {os.strerror(err)} (is CONFIG_TRACING on?)")
    return target


def umount_tracefs(target: Path) -> None:
    """Unmount what mount_tracefs() mounted (lazily if still busy) and remove the folder."""
    libc = _libc()
    if libc.umount2(os.fsencode(target), 0) != 0 and ctypes.get_errno() == errno.EBUSY:
        libc.umount2(os.fsencode(target), MNT_DETACH)
    with contextlib.suppress(OSError):
        target.rmdir()


class Tracefs:
    """``with Tracefs() as root:`` -- an existing tracefs mount, or one mounted for the block."""

    def __init__(self, mounts: Path = MOUNTS):
        self.mounts = mounts
        self.root: Path | None = None
        self.mounted_by_us = False

    def __enter__(self) -> Path:
        if os.geteuid() != 0:
            raise PermissionProblem("recording needs root: tracefs instances can only be "
                                    "created by root")
        self.root = find_tracefs(self.mounts)
        if self.root is None:
            self.root = mount_tracefs()
            self.mounted_by_us = True
        return self.root

    def __exit__(self, *exc) -> None:
        if self.mounted_by_us and self.root is not None:
            umount_tracefs(self.root)


class Instance:
    """A private ftrace instance ``instances/<name>``: created on enter, removed on exit.

    Removal stops tracing first; the kernel refuses rmdir while files of the instance are
    open (EBUSY), so it is retried briefly.
    """

    def __init__(self, root: Path, name: str):
        self.root = root
        self.path = root / "instances" / name

    def __enter__(self) -> Instance:
        try:
            self.path.mkdir()
        except FileExistsError:
            raise InputError(f"tracefs instance {self.path} already exists (another memdesc "
                             "record of this process id?); remove it with rmdir") from None
        except PermissionError:
            raise PermissionProblem(f"cannot create {self.path}: not root?") from None
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        if not self.path.exists():
            return
        with contextlib.suppress(OSError):
            self.write("tracing_on", "0")
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.05)
        raise InputError(f"could not remove tracefs instance {self.path} (busy); remove it "
                         "with rmdir once its readers are gone")

    def file(self, rel: str) -> Path:
        return self.path / rel

    def write(self, rel: str, value: str) -> None:
        with open(self.path / rel, "w") as fh:
            fh.write(value)

    def read(self, rel: str) -> str:
        return (self.path / rel).read_text()

    def cpus(self) -> list[int]:
        return sorted(int(p.name[3:]) for p in (self.path / "per_cpu").glob("cpu*")
                      if p.name[3:].isdigit())
