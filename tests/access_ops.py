"""Access streams in the tests' hand-written form, both ways: an operation is
``(op class, [(address, kind), ...])``. test_timing.py builds streams from such lists,
test_access.py reads the emulator's drained streams back into them; both read counter rows
(memdesc.mm.access's CT_* columns) as :class:`Counts` records."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from memdesc.mm import access
from memdesc.mm.access import (
    KIND_DEP,
    KIND_PTR,
    KIND_STORE,
    OP_CLASS_ID,
    AccessStream,
    chain_levels,
)

#: access kinds, short: a plain load, a store, a pointer load, a dependent load (bits combine)
LD, ST, P, D = 0, KIND_STORE, KIND_PTR, KIND_DEP
#: the counter columns in :class:`Counts` order
COLUMNS = (access.CT_OPS, access.CT_LOADS, access.CT_STORES, access.CT_LINES,
           access.CT_CHAIN_SUM, access.CT_CHAIN_MAX)


class Counts(NamedTuple):
    """One operation class's counter row (memdesc.mm.access.counters()[class])."""
    ops: int
    loads: int
    stores: int
    lines: int
    chain_sum: int
    chain_max: int


def counts(row: np.ndarray) -> Counts:
    return Counts(*(int(row[c]) for c in COLUMNS))


def ops_stream(ops: list[tuple[int, list[tuple[int, int]]]]) -> AccessStream:
    """``ops`` = [(op_class, [(addr, kind), ...]), ...] as an AccessStream."""
    addr = [a for _, acc in ops for a, _ in acc]
    kind = [k for _, acc in ops for _, k in acc]
    first = np.cumsum([0] + [len(acc) for _, acc in ops]).astype(np.int64)
    return AccessStream(np.array(addr, np.uint64), np.array(kind, np.uint8),
                        np.array([c for c, _ in ops], np.uint8), first)


def class_ops(stream: AccessStream, cls: str) -> list[list[tuple[int, int]]]:
    """The (address, kind) lists of the operations of class ``cls`` in ``stream``."""
    c = OP_CLASS_ID[cls]
    return [[(int(stream.addr[a]), int(stream.kind[a]))
             for a in range(stream.op_first[i], stream.op_first[i + 1])]
            for i in range(stream.nr_ops) if stream.op_class[i] == c]


def check_against_stream(counters: np.ndarray, s: AccessStream) -> None:
    """Counters (from zero) agree with the drained stream: per class operations, loads,
    stores, distinct lines per operation, chain sum and max (access.chain_levels)."""
    chains = chain_levels(s)
    want = np.zeros_like(counters)
    for i in range(s.nr_ops):
        a, b = int(s.op_first[i]), int(s.op_first[i + 1])
        st = (s.kind[a:b] & KIND_STORE) != 0
        got = Counts(1, int((~st).sum()), int(st.sum()),
                     len(np.unique(s.addr[a:b] >> np.uint64(6))), int(chains[i]), int(chains[i]))
        row = want[s.op_class[i]]
        old = counts(row)
        row[list(COLUMNS)] = [x + y for x, y in zip(old[:-1], got[:-1], strict=True)] + \
            [max(old.chain_max, got.chain_max)]
    np.testing.assert_array_equal(counters, want)
