"""A kernel source tree on disk: checked, versioned, its C files listed.

A folder is a kernel tree when it has the top-level ``Makefile`` with ``VERSION =`` and
``PATCHLEVEL =``, ``MAINTAINERS`` and ``include/linux/``: what scripts/get_maintainer.pl's
top_of_kernel_tree() checks, less the files a source package may leave out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from memdesc.errors import InputError

_VERSION = re.compile(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)[ \t]*=[ \t]*(\S*)", re.M)
#: Folders never scanned: version control and build output.
SKIP_DIRS = frozenset({".git", ".pc", ".tmp_versions"})


@dataclass(frozen=True)
class KernelTree:
    root: Path
    version: str

    @classmethod
    def open(cls, path: str | os.PathLike) -> KernelTree:
        """The tree at ``path``; one clear error when it is not one."""
        root = Path(path)
        if not root.is_dir():
            raise InputError(f"{path}: no such folder; give the top of a kernel source tree "
                             "(e.g. /usr/src/linux-source-6.12 after extracting its tarball)")
        missing = [n for n in ("Makefile", "MAINTAINERS", "include/linux")
                   if not (root / n).exists()]
        if missing:
            raise InputError(f"{path} is not a kernel source tree (no {', '.join(missing)}); "
                             "give the folder that holds MAINTAINERS and Makefile")
        try:
            head = (root / "Makefile").read_text(errors="replace")[:4096]
        except OSError as e:
            raise InputError(f"{root / 'Makefile'}: cannot read ({e.strerror})") from None
        parts = dict(_VERSION.findall(head))
        if "VERSION" not in parts or "PATCHLEVEL" not in parts:
            raise InputError(f"{root / 'Makefile'}: no VERSION/PATCHLEVEL lines; "
                             "is this the top of a kernel tree?")
        version = f"{parts['VERSION']}.{parts['PATCHLEVEL']}"
        if parts.get("SUBLEVEL"):
            version += f".{parts['SUBLEVEL']}"
        version += parts.get("EXTRAVERSION", "")
        return cls(root.resolve(), version)

    def c_files(self) -> list[str]:
        """Every ``*.c`` and ``*.h`` file, relative to the root, sorted."""
        out: list[str] = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            rel = os.path.relpath(folder, self.root)
            prefix = "" if rel == "." else rel + "/"
            out.extend(prefix + f for f in files if f.endswith((".c", ".h")))
        out.sort()
        return out

    def read(self, rel: str) -> bytes:
        """The bytes of one file; an unreadable file is one clear error."""
        try:
            with open(self.root / rel, "rb") as f:
                return f.read()
        except OSError as e:
            raise InputError(f"{self.root / rel}: cannot read ({e.strerror}); fix its "
                             "permissions or remove it from the tree") from None
