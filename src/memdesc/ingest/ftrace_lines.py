"""The numba kernel that parses kmem trace text lines (see :mod:`memdesc.ingest.ftrace_text`).

One int64 row per meaningful line (event, marker, loss report, other event, bad line), with
numbers already parsed and strings (gfp flags, cache name, call site, marker text) left as a
64-bit FNV-1a hash plus the byte span, for decoding once per distinct value.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from memdesc.ingest.trace_events import EVENT_NAMES

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a(data: bytes) -> int:
    """64-bit FNV-1a as a signed int64, the same value the numba kernel computes."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h


# Row layout of the kernel's output (one int64 row per meaningful line).
(R_KIND, R_LINE, R_CPU, R_TIME, R_EV, R_PFN, R_ORDER, R_MT, R_GFP_H, R_GFP_S, R_GFP_E, R_PTR,
 R_NAME_H, R_NAME_S, R_NAME_E, R_CS_H, R_CS_S, R_CS_E, R_BREQ, R_BALLOC, R_REFILL, R_COUNT,
 R_TXT_S, R_TXT_E, R_PAGE, R_HAVE, R_ERR, R_SYS, R_DEV, R_INO, R_INDEX, R_LAST, R_LRU,
 R_LRU_FLAGS, R_ADDR, R_ERRCODE, R_PID) = range(37)
NROW = 37
K_EVENT, K_MARKER, K_LOST, K_OTHER, K_BAD = 1, 2, 3, 4, 5
# Bits of R_HAVE: which key=value fields the line carried.
(H_PFN, H_PAGE, H_ORDER, H_MT, H_GFP, H_PTR, H_NAME, H_CS, H_BREQ, H_BALLOC, H_REFILL, H_DEV,
 H_INO, H_OFS, H_LRU, H_FLAGS, H_ADDR, H_ERRCODE) = (1 << i for i in range(18))
H_PAGE_NULL = 1 << 40
_KEYS = (b"pfn", b"page", b"order", b"migratetype", b"gfp_flags", b"ptr", b"name", b"call_site",
         b"bytes_req", b"bytes_alloc", b"percpu_refill", b"dev", b"ino", b"ofs", b"lru",
         b"flags", b"address", b"error_code")
KEY_HASHES = np.array([fnv1a(k) for k in _KEYS], dtype=np.int64)
_K_DEV, _K_INO, _K_OFS, _K_LRU, _K_FLAGS, _K_ADDR, _K_ERRCODE = range(11, 18)
_PAGE = H_PFN | H_PAGE
#: [M] the filemap events' print fmt (6.18): ``ofs`` is ``index << 12`` (PAGE_SHIFT)
OFS_SHIFT = 12
#: [S] include/trace/events/pagemap.h, 6.18: mm_lru_insertion prints trace_pagemap_flags()
#: as six characters, "flags=%s%s%s%s%s%s": per position (character, bit) pairs
#: (PAGEMAP_MAPPED 'M', PAGEMAP_ANONYMOUS 'a' -- else 'f', PAGEMAP_FILE --, PAGEMAP_SWAPCACHE
#: 's', PAGEMAP_SWAPBACKED 'b', PAGEMAP_MAPPEDDISK 'd', PAGEMAP_BUFFERS 'B'; else a space).
LRU_FLAG_CHARS = np.array([[ord("M"), 0x1, 0, 0], [ord("a"), 0x2, ord("f"), 0x4],
                           [ord("s"), 0x8, 0, 0], [ord("b"), 0x10, 0, 0],
                           [ord("d"), 0x20, 0, 0], [ord("B"), 0x40, 0, 0]], dtype=np.int64)
#: Fields an event line must carry (any of the _PAGE pair) -- from the 6.18 print fmts.
REQUIRED = np.array([
    _PAGE | H_ORDER | H_MT | H_GFP,      # mm_page_alloc
    _PAGE | H_ORDER,                     # mm_page_free
    _PAGE,                               # mm_page_free_batched
    _PAGE | H_ORDER | H_MT,              # mm_page_alloc_zone_locked
    _PAGE | H_ORDER | H_MT,              # mm_page_pcpu_drain
    H_PTR | H_CS | H_BREQ | H_BALLOC | H_GFP,   # kmem_cache_alloc
    H_PTR | H_CS,                        # kmem_cache_free
    H_PTR | H_CS | H_BREQ | H_BALLOC | H_GFP,   # kmalloc
    H_PTR | H_CS,                        # kfree
    H_DEV | H_INO | H_PFN | H_OFS | H_ORDER,    # mm_filemap_add_to_page_cache
    H_DEV | H_INO | H_PFN | H_OFS | H_ORDER,    # mm_filemap_delete_from_page_cache
    H_DEV | H_INO | H_OFS,               # mm_filemap_get_pages (ofs=START-END)
    H_DEV | H_INO | H_OFS,               # mm_filemap_map_pages (ofs=START-END)
    H_DEV | H_INO | H_OFS,               # mm_filemap_fault
    H_PFN | H_LRU | H_FLAGS,             # mm_lru_insertion
    H_PFN,                               # mm_lru_activate
    H_ADDR | H_ERRCODE,                  # page_fault_user
    H_ADDR | H_ERRCODE,                  # page_fault_kernel
], dtype=np.int64)
EVENT_HASHES = np.array([fnv1a(n.encode()) for n in EVENT_NAMES]
                        + [fnv1a(b"tracing_mark_write"), fnv1a(b"print")], dtype=np.int64)
ERRORS = {
    1: "not a trace line (no [CPU] field)",
    2: "bad timestamp (expected SECONDS.FRACTION:)",
    3: "no event name after the timestamp",
    4: "bad field value",
    5: "a field this event always carries is missing (truncated line?)",
    6: "bad loss line",
}


@njit(cache=True)
def _fnv(buf, s, e):
    h = np.uint64(0xCBF29CE484222325)
    for i in range(s, e):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    return np.int64(h)


@njit(cache=True)
def _num(buf, s, e, hex_only):
    """Parse [-]digits, 0xHEX, bare HEX (hex_only) or (null)/(nil). Returns (value, ok)."""
    if s >= e:
        return 0, False
    if buf[s] == 40:                                   # '(' : (null) / (nil)
        return 0, (e - s == 5 or e - s == 6) and buf[e - 1] == 41
    neg = buf[s] == 45
    if neg:
        s += 1
    base = 10
    if e - s > 2 and buf[s] == 48 and (buf[s + 1] == 120 or buf[s + 1] == 88):
        base = 16
        s += 2
    elif hex_only:
        base = 16
    if s >= e:
        return 0, False
    v = np.int64(0)
    for i in range(s, e):
        c = buf[i]
        if 48 <= c <= 57:
            d = c - 48
        elif base == 16 and 97 <= c <= 102:
            d = c - 87
        elif base == 16 and 65 <= c <= 70:
            d = c - 55
        else:
            return 0, False
        v = v * base + d
    return (-v if neg else v), True


@njit(cache=True)
def _starts(buf, p, e, lit):
    if e - p < len(lit):
        return False
    for i in range(len(lit)):  # noqa: SIM110 (numba: no generators)
        if buf[p + i] != lit[i]:
            return False
    return True


@njit(cache=True)
def _parse_line(buf, p, e, row, ev_hashes, key_hashes, required):
    """Parse one line [p, e) into ``row``; return its kind (0 = nothing to keep)."""
    comment = p < e and buf[p] == 35                   # '#' in column 0 (a comm may hold '#')
    while p < e and buf[p] == 32:
        p += 1
    if p >= e:
        return 0
    if comment:
        if _starts(buf, p, e, b"##### CPU "):
            v, ok = _num(buf, p + 10, p + 10 + _span_digits(buf, p + 10, e), False)
            row[R_CPU] = v
            row[R_COUNT] = -1
            return K_LOST if ok else 0
        return 0
    # The [CPU] field: the first '[' + digits + ']'.
    q, cpu_s, cpu_e = p, -1, -1
    while q < e:
        if buf[q] == 91:
            n = _span_digits(buf, q + 1, e)
            if n > 0 and q + 1 + n < e and buf[q + 1 + n] == 93:
                cpu_s, cpu_e = q + 1, q + 1 + n
                break
        q += 1
    if cpu_s < 0:
        return _parse_loss(buf, p, e, row)
    row[R_CPU] = _num(buf, cpu_s, cpu_e, False)[0]
    row[R_PID] = _pid_before(buf, p, cpu_s - 1)
    q = cpu_e + 1
    # Optional irq/preempt flags column, then the timestamp token "S.F:".
    for _ in range(2):
        while q < e and buf[q] == 32:
            q += 1
        t = q
        while t < e and buf[t] != 32:
            t += 1
        if t - q >= 2 and buf[t - 1] == 58 and 48 <= buf[q] <= 57:
            break
        q = t
    else:
        row[R_ERR] = 2
        return K_BAD
    dot = q
    while dot < t - 1 and buf[dot] != 46:
        dot += 1
    secs, ok = _num(buf, q, dot, False)
    if not ok:
        row[R_ERR] = 2
        return K_BAD
    if dot < t - 1:
        frac, ok = _num(buf, dot + 1, t - 1, False)
        nd = t - 1 - dot - 1
        if not ok or nd > 9:
            row[R_ERR] = 2
            return K_BAD
        for _ in range(9 - nd):
            frac *= 10
        row[R_TIME] = secs * 1000000000 + frac
    else:
        row[R_TIME] = secs                              # counter-style clocks: as printed
    q = t
    while q < e and buf[q] == 32:
        q += 1
    t = q
    while t < e and buf[t] != 32:
        t += 1
    if t - q == 16 and _starts(buf, q, e, b"PERF_RECORD_LOST"):
        while t < e and buf[t] == 32:
            t += 1
        if _starts(buf, t, e, b"lost "):
            v, ok = _num(buf, t + 5, t + 5 + _span_digits(buf, t + 5, e), False)
            if ok:
                row[R_COUNT] = v
                return K_LOST
        row[R_ERR] = 6
        return K_BAD
    if t - q < 2 or buf[t - 1] != 58:
        row[R_ERR] = 3
        return K_BAD
    ns = q
    for i in range(q, t - 1):                           # perf: "kmem:mm_page_alloc:"
        if buf[i] == 58:
            ns = i + 1
            row[R_SYS] = 1
    h = _fnv(buf, ns, t - 1)
    code = -1
    for i in range(len(ev_hashes)):
        if ev_hashes[i] == h:
            code = i
            break
    q = t + 1 if t < e else t
    if code < 0 or code >= len(required):
        if code < 0:
            row[R_TXT_S], row[R_TXT_E] = ns, t - 1
            return K_OTHER
        if code == len(required) + 1:                   # trace-cmd "print: IP: TEXT"
            while q < e and buf[q] == 32:
                q += 1
            while q < e and not (buf[q] == 58 and (q + 1 == e or buf[q + 1] == 32)):
                q += 1
            q = q + 2 if q + 1 < e else e
        row[R_TXT_S], row[R_TXT_E] = q, e
        return K_MARKER
    row[R_EV] = code
    have = 0
    while q < e:
        while q < e and buf[q] == 32:
            q += 1
        ks = q
        while q < e and buf[q] != 32 and buf[q] != 61:
            q += 1
        ke = q
        if q >= e or buf[q] == 32:                      # a token without '='
            # "dev MAJ:MIN ino HEX" (filemap add/delete): the next token is the value
            if not (ke - ks == 3 and (_starts(buf, ks, e, b"dev")
                                      or _starts(buf, ks, e, b"ino"))):
                continue
            while q < e and buf[q] == 32:
                q += 1
            vs = q
        else:
            vs = q + 1
        kh = _fnv(buf, ks, ke)
        k = -1
        for i in range(len(key_hashes)):
            if key_hashes[i] == kh:
                k = i
                break
        ve = vs
        if k == _K_FLAGS:                               # six characters, spaces included
            ve = min(vs + len(LRU_FLAG_CHARS), e)
        else:
            while ve < e and buf[ve] != 32:
                ve += 1
        q = ve
        if k < 0:
            continue
        bit = 1 << k
        if k >= _K_DEV:
            if not _lookup_field(buf, vs, ve, k, row):
                row[R_ERR] = 4
                row[R_TXT_S], row[R_TXT_E] = ks, ve
                return K_BAD
        elif k == 4 or k == 6 or k == 7:                # gfp_flags, name, call_site: strings
            col = R_GFP_H if k == 4 else (R_NAME_H if k == 6 else R_CS_H)
            row[col], row[col + 1], row[col + 2] = _fnv(buf, vs, ve), vs, ve
        else:
            v, ok = _num(buf, vs, ve, k == 1 or k == 5)
            if not ok:
                row[R_ERR] = 4
                row[R_TXT_S], row[R_TXT_E] = ks, ve
                return K_BAD
            if k == 0:
                row[R_PFN] = v
            elif k == 1:
                row[R_PAGE] = v
                if v == 0:
                    have |= H_PAGE_NULL
            elif k == 2:
                row[R_ORDER] = v
            elif k == 3:
                row[R_MT] = v
            elif k == 5:
                row[R_PTR] = v
            elif k == 8:
                row[R_BREQ] = v
            elif k == 9:
                row[R_BALLOC] = v
            else:
                row[R_REFILL] = v
        have |= bit
    row[R_HAVE] = have
    need = required[code]
    if (need & _PAGE and not have & _PAGE) or (need & ~_PAGE & ~have):
        row[R_ERR] = 5
        return K_BAD
    return K_EVENT


@njit(cache=True)
def _lookup_field(buf, vs, ve, k, row):
    """One field of a lookup event (memdesc record --lookups) into ``row``; False when bad.
    dev "MAJOR:MINOR" -> the kernel's dev_t (MAJOR << 20 | MINOR, [S] MKDEV()); ino hex;
    ofs "BYTES" or "FIRST-LAST" bytes -> index (and last_index, the page holding LAST);
    flags: the six characters of LRU_FLAG_CHARS."""
    if k == _K_DEV:
        c = vs
        while c < ve and buf[c] != 58:
            c += 1
        major, ok1 = _num(buf, vs, c, False)
        minor, ok2 = _num(buf, c + 1, ve, False)
        row[R_DEV] = (major << 20) | minor
        return ok1 and ok2 and c < ve
    if k == _K_OFS:
        c = vs + 1                                      # a '-' after the first digit
        while c < ve and buf[c] != 45:
            c += 1
        first, ok = _num(buf, vs, c, False)
        row[R_INDEX] = first >> OFS_SHIFT
        if c < ve:
            last, ok2 = _num(buf, c + 1, ve, False)
            row[R_LAST] = last >> OFS_SHIFT
            ok = ok and ok2
        return ok
    if k == _K_FLAGS:
        f = 0
        for i in range(ve - vs):
            ch = buf[vs + i]
            if ch == LRU_FLAG_CHARS[i, 0]:
                f |= LRU_FLAG_CHARS[i, 1]
            elif ch == LRU_FLAG_CHARS[i, 2] and ch != 0:
                f |= LRU_FLAG_CHARS[i, 3]
            elif ch != 32:
                return False
        row[R_LRU_FLAGS] = f
        return True
    v, ok = _num(buf, vs, ve, k == _K_INO)
    if k == _K_INO:
        row[R_INO] = v
    elif k == _K_LRU:
        row[R_LRU] = v
    elif k == _K_ADDR:
        row[R_ADDR] = v
    else:
        row[R_ERRCODE] = v
    return ok


@njit(cache=True)
def _pid_before(buf, p, q):
    """The PID of the task column ending before ``q`` (the [CPU] field's '['): ``TASK-PID``
    (tracefs, trace-cmd; the comm may hold '-' and spaces: the PID is the digits after the
    last '-'), ``TASK-PID (TGID)`` (the record-tgid option) or ``TASK PID`` (perf script).
    -1 when there is none. The PID is the task's common_pid, which the raw records carry
    (trace_output.c lat_print_generic()/trace_print_context(): "%16s-%-7d")."""
    q -= 1
    while q >= p and buf[q] == 32:
        q -= 1
    if q >= p and buf[q] == 41:                        # ')': skip "(TGID)"
        while q >= p and buf[q] != 40:
            q -= 1
        q -= 1
        while q >= p and buf[q] == 32:
            q -= 1
    e = q + 1
    while q >= p and 48 <= buf[q] <= 57:
        q -= 1
    if q + 1 == e or q < p or (buf[q] != 45 and buf[q] != 32):
        return -1
    return _num(buf, q + 1, e, False)[0]


@njit(cache=True)
def _span_digits(buf, p, e):
    n = 0
    while p + n < e and 48 <= buf[p + n] <= 57:
        n += 1
    return n


@njit(cache=True)
def _parse_loss(buf, p, e, row):
    """Lines without a [CPU] field: loss reports, trace-cmd headers, or garbage."""
    if _starts(buf, p, e, b"cpus=") or _starts(buf, p, e, b"version = "):
        return 0
    q = p
    while q + 4 <= e and not _starts(buf, q, e, b"CPU:"):
        q += 1
    if q + 4 > e:
        if _starts(buf, p, e, b"CPU ") and _starts(buf, e - 9, e, b" is empty"):
            return 0
        row[R_ERR] = 1
        return K_BAD
    n = _span_digits(buf, q + 4, e)
    cpu, ok = _num(buf, q + 4, q + 4 + n, False)
    q += 4 + n
    if not ok or not _starts(buf, q, e, b" ["):
        row[R_ERR] = 6
        return K_BAD
    q += 2
    row[R_CPU] = cpu
    if _starts(buf, q, e, b"LOST "):                     # trace_pipe: CPU:N [LOST M EVENTS]
        q += 5
    elif _starts(buf, q, e, b"EVENTS DROPPED]"):         # trace-cmd, count unknown
        row[R_COUNT] = -1
        return K_LOST
    n = _span_digits(buf, q, e)
    v, ok = _num(buf, q, q + n, False)
    if ok and (_starts(buf, q + n, e, b" EVENTS]") or _starts(buf, q + n, e, b" EVENTS DROPPED]")):
        row[R_COUNT] = v
        return K_LOST
    row[R_ERR] = 6
    return K_BAD


@njit(cache=True)
def parse_block(buf, n, out, defaults, ev_hashes, key_hashes, required):
    """Parse complete lines of buf[:n] into rows of ``out``; returns (rows, lines)."""
    nrow = 0
    line = 0
    pos = 0
    while pos < n:
        e = pos
        while e < n and buf[e] != 10:
            e += 1
        le = e - 1 if e > pos and buf[e - 1] == 13 else e
        row = out[nrow]
        row[:] = defaults
        kind = _parse_line(buf, pos, le, row, ev_hashes, key_hashes, required)
        if kind != 0:
            row[R_KIND] = kind
            row[R_LINE] = line
            nrow += 1
        line += 1
        pos = e + 1
    return nrow, line


ROW_DEFAULTS = np.zeros(NROW, dtype=np.int64)
for _c in (R_CPU, R_EV, R_PFN, R_ORDER, R_MT, R_REFILL, R_BREQ, R_BALLOC, R_TIME, R_COUNT,
           R_INDEX, R_LAST, R_LRU, R_LRU_FLAGS, R_ERRCODE, R_PID):
    ROW_DEFAULTS[_c] = -1


@njit(cache=True)
def fnv_rows(buf, starts, ends):
    out = np.empty(len(starts), dtype=np.int64)
    for i in range(len(starts)):
        out[i] = _fnv(buf, starts[i], ends[i])
    return out
