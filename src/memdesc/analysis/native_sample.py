"""Sampling for the native measurement (memdesc.analysis.native_timing's module doc, section
"Sampling"): the kept operations of each stage, windows of consecutive operations at a shared
period, and the first RESERVE_OPS operations of every class."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memdesc.mm.access import OP_CLASSES

RESERVE_OPS = 64                # operations of each class kept outside the windows
NCLS = len(OP_CLASSES)


@dataclass
class _Sample:
    """The kept operations of one stage (positions in its op sequence) and their accesses."""

    pos: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    op_class: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    op_len: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    addr: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    rsv: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    seen: int = 0
    ops_seen: np.ndarray = field(default_factory=lambda: np.zeros(NCLS, np.int64))
    reserved: np.ndarray = field(default_factory=lambda: np.zeros(NCLS, np.int64))
    accesses_seen: int = 0

    def reserve(self, cls: np.ndarray) -> np.ndarray:
        """The operations kept whatever the windows: the first RESERVE_OPS of each class (a
        class too rare for the windows, e.g. trace-slab's three pcp drains, is measured)."""
        out = np.zeros(len(cls), bool)
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)[:max(0, RESERVE_OPS - int(self.reserved[c]))]
            out[idx] = True
            self.reserved[c] += len(idx)
        return out

    def append(self, pos, op_class, op_len, addr, kind, rsv) -> None:
        self.rsv = np.concatenate([self.rsv, rsv])
        self.pos = np.concatenate([self.pos, pos])
        self.op_class = np.concatenate([self.op_class, op_class])
        self.op_len = np.concatenate([self.op_len, op_len])
        self.addr = np.concatenate([self.addr, addr])
        self.kind = np.concatenate([self.kind, kind])

    def keep(self, op_mask: np.ndarray) -> None:
        """Keep the operations of ``op_mask`` and the reserved ones (reserve())."""
        op_mask = op_mask | self.rsv
        acc = np.repeat(op_mask, self.op_len)
        self.rsv = self.rsv[op_mask]
        self.pos, self.op_class = self.pos[op_mask], self.op_class[op_mask]
        self.op_len = self.op_len[op_mask]
        self.addr, self.kind = self.addr[acc], self.kind[acc]


def window_mask(pos: np.ndarray, window: int, period: int) -> np.ndarray:
    """Which operations (by position in the op sequence) lie in kept windows."""
    return (pos // window) % period == 0
