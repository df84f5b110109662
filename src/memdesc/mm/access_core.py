"""The numba core of metadata access accounting (memdesc.mm.access is the API and the contract).

Every numba function that has the allocator's state array S can count: ``S[C_ACC]`` holds the
address of the accounting block (an int64 array Python keeps alive, see access.enable()), 0
when accounting is off. An access site is then one load of S[C_ACC] and one predictable
branch when off (one load per kernel call where LLVM can merge them: :func:`acc_word`);
the recording (:func:`_record`) runs only when on.

The block (``A``): a header (``A_*`` words), the counters (one row of ``NCOUNT`` per op class),
the line table (distinct 64-byte lines of the current operation) and the optional log
(``addr | kind`` words, then ``first << 8 | class`` words per operation).

Nodes and dependence. Accesses to struct pages, free pages and list heads carry the *node*
they belong to (a PFN, or ``-1 - h`` for list head ``h``); a ``KIND_PTR`` load names the node
its value points to. An access is ``KIND_DEP`` when its node is the one the latest PTR load of
the operation named: the kernel computes that address from the loaded pointer. Sites that
know their dependence (descriptor loads, page-table entries) pass kinds explicitly
(:func:`acc_k`). ``A_NOPTR`` lets a list operation read a pointer that later *stores* use
without making it the latest PTR (list_del() reads prev then next at the same level: only next
is the PTR, so the stream's "latest PTR" rule gives both level 2, as in the kernel).

Distinct lines: an open-addressing table of LT_SIZE (line, op sequence) pairs, so clearing it
per operation is free. Exact while an operation touches at most LT_FILL distinct lines; past
that every further access counts as a new line (an over-count, flagged in ``A_LT_OVER``).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: config slot of S holding the accounting block's address (0: off); ft_common's slot 31
C_ACC = 31

KIND_STORE, KIND_DEP, KIND_PTR = 1, 2, 4
#: (call-site only) ``addr`` is an index into mem: the recording turns it into the struct page
#: word's vmemmap address and its PFN node (A_MEMBASE, A_W), so the site stays a bare call
KIND_MEMWORD = 8
#: class ids of memdesc.mm.access.OP_CLASSES the numba code opens (checked there)
(OP_ALLOC_PCP, OP_ALLOC_REFILL, OP_ALLOC_BUDDY, OP_FREE_PCP, OP_FREE_DRAIN, OP_FREE_BUDDY,
 OP_FOLIO_ALLOC, OP_FOLIO_PUT, OP_KMEM_ALLOC, OP_KMEM_FREE, OP_PAGE_FOLIO, OP_FOLIO_PAGE,
 OP_PAGE_ZONE, OP_PAGE_TO_NID, OP_PAGE_FLAG, OP_PT_WALK, OP_PAGECACHE,
 OP_FOLIO_PUT_REF) = range(18)
NONODE = -(1 << 62)           # an access that names no node (never DEP by node)
#: an access of kernel memory by address: DEP when it lies in [v - 128, v + 256) of the value
#: v the latest PTR load returned (a member of the object that pointer names, container_of()
#: included). A heuristic the typed sites (struct page words by PFN) do not need.
ADDRNODE = NONODE + 1
ADDR_BEFORE, ADDR_AFTER = 128, 256

# header words of the block
(A_SIZE, A_DEPTH, A_CLASS, A_PTRLVL, A_CHAIN, A_SEQ, A_PTRNODE, A_NOPTR, A_LOADS, A_STORES,
 A_LINES, A_LTFILL, A_LT_OVER, A_OFF_CT, A_OFF_LT, A_OFF_LOG, A_LOGCAP, A_LOGN, A_OFF_OPS,
 A_OPCAP, A_OPN, A_DROPPED, A_OPFIRST, A_NCLASS, A_FN_RECORD, A_FN_BEGIN, A_FN_END, A_FN_NOPTR,
 A_FN_REFINE, A_MEMBASE, A_W) = range(31)
NHDR = 32
#: counter columns (access.CT_*)
CT_OPS, CT_LOADS, CT_STORES, CT_LINES, CT_CHAIN_SUM, CT_CHAIN_MAX = range(6)
NCOUNT = 6
LT_BITS = 12
LT_SIZE = 1 << LT_BITS
LT_FILL = LT_SIZE * 3 // 4
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def block_words(nclass: int, log_capacity: int, op_capacity: int) -> int:
    return NHDR + nclass * NCOUNT + 2 * LT_SIZE + log_capacity + op_capacity


@intrinsic
def _as_ptr(typingctx, addr):
    """int64 address -> int64* (the accounting block Python keeps alive)."""
    sig = types.CPointer(types.int64)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.int64)))

    return sig, codegen


@intrinsic
def unlikely(typingctx, cond):
    """``cond`` with llvm.expect(cond, false): the accounting branch is cold, so LLVM keeps
    the recording out of line and the hot path as it was (one load and a compare)."""
    sig = types.boolean(types.boolean)

    def codegen(context, builder, signature, args):
        i1 = ir.IntType(1)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i1, [i1, i1]),
                                            "llvm.expect.i1")
        return builder.call(fn, [args[0], ir.Constant(i1, 0)])

    return sig, codegen


@intrinsic
def _call_out(typingctx, fn, a, b, c, d, e):
    """Call the C function at address ``fn`` with five int64 arguments. An indirect call is
    one LLVM cannot inline: the access sites of the hot paths stay a load, a compare and a
    call, so accounting off costs what the branch costs (with the recording inlined at ~60
    sites the hot kernels grew enough to lose their own inlining: +20 % on a replay).

    The call is marked ``inaccessiblememonly nounwind``: the callees (the cfuncs of
    :func:`callbacks`) touch only the accounting block, which no kernel reads or writes inline
    (except the A_FN_* words, written by Python before the block is attached and by no callee).
    Without it LLVM must assume every site, taken or not, may write ``mem`` and ``S``, and
    reload what it kept in registers after each of the ~60 sites. Measured on the trace-slab
    replay loops (CPU, accounting off): with this and :func:`acc_word`'s invariant load
    0.246-0.249 s, without both 0.279-0.285 s (compiled out: 0.20 s); the two were not
    measured apart. Most of the rest was what sites computed inline (:func:`acc_mw`)."""
    sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64,
                     types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [i64] * 5)
        call = builder.call(builder.inttoptr(args[0], fnty.as_pointer()), list(args[1:]),
                            attrs=("nounwind",))
        # llvmlite's call-site attribute list lacks it; LLVM's parser takes the name as is
        set.add(call.attributes, "inaccessiblememonly")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def acc_word(typingctx, S):
    """``S[C_ACC]`` loaded with ``!invariant.load``: the word changes only from Python between
    kernel calls (access.enable()/disable()), never inside one, so LLVM may merge every site's
    load into the first one that dominates it, across the kernel's stores to ``mem`` and ``S``
    (which it must otherwise assume alias the word). The ~60 sites of a hot path then share one
    load, and their branches one condition."""
    sig = types.int64(S)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, value=args[0])
        ptr = builder.gep(arr.data, [ir.Constant(ir.IntType(64), C_ACC)], inbounds=True)
        word = builder.load(ptr)
        word.set_metadata("invariant.load", builder.module.add_metadata([]))
        return word

    return sig, codegen


@njit(cache=True)
def acc_on(S):
    """Accounting is on for this state array (a cold branch)."""
    return unlikely(acc_word(S) != 0)


@njit(cache=True)
def block(p):
    """The accounting block at address ``p`` as an array."""
    ptr = _as_ptr(p)
    return carray(ptr, carray(ptr, NHDR)[A_SIZE])


@njit(cache=True)
def _new_line(A, line):
    """True when 64-byte ``line`` is new in the current operation (and remember it)."""
    if A[A_LTFILL] >= LT_FILL:
        A[A_LT_OVER] += 1
        return True
    seq = A[A_SEQ]
    base = A[A_OFF_LT]
    mask = LT_SIZE - 1
    h = np.int64((np.uint64(line) * _GOLD) >> np.uint64(64 - LT_BITS))
    while True:
        j = base + 2 * h
        if A[j + 1] != seq:
            A[j] = line
            A[j + 1] = seq
            A[A_LTFILL] += 1
            return True
        if A[j] == line:
            return False
        h = (h + 1) & mask


@njit(cache=True)
def _record(p, addr, kind, node, val_node):
    A = block(p)
    if A[A_DEPTH] == 0:
        return                                  # outside every counted operation
    if kind & KIND_MEMWORD:                     # mem[addr]: struct page word of PFN addr // W
        kind &= ~KIND_MEMWORD
        node = np.int64(addr) // A[A_W]
        addr = np.uint64(A[A_MEMBASE]) + (addr << np.uint64(3))
    if node == ADDRNODE:
        d = np.int64(np.uint64(addr) - np.uint64(A[A_PTRNODE]))
        if -ADDR_BEFORE <= d < ADDR_AFTER and A[A_PTRNODE] != NONODE:
            kind |= KIND_DEP
    elif node != NONODE and node == A[A_PTRNODE]:
        kind |= KIND_DEP
    if kind & KIND_PTR and A[A_NOPTR]:
        kind &= ~KIND_PTR
    if kind & KIND_STORE:
        A[A_STORES] += 1
    else:
        A[A_LOADS] += 1
        level = A[A_PTRLVL] + 1 if kind & KIND_DEP else 1
        if level > A[A_CHAIN]:
            A[A_CHAIN] = level
        if kind & KIND_PTR:
            A[A_PTRLVL] = level
            A[A_PTRNODE] = val_node
    if _new_line(A, np.int64(np.uint64(addr) >> np.uint64(6))):
        A[A_LINES] += 1
    n = A[A_LOGN]
    if A[A_LOGCAP] > 0 and A[A_DROPPED] == 0:
        if n < A[A_LOGCAP]:
            A[A[A_OFF_LOG] + n] = np.int64((np.uint64(addr) & ~np.uint64(7)) | np.uint64(kind))
            A[A_LOGN] = n + 1
        else:
            A[A_DROPPED] = 1


@njit(cache=True)
def acc(S, addr, kind, node, val_node):
    """Count one access of ``kind`` (KIND_STORE / KIND_PTR; DEP is derived from ``node``) at
    emulated address ``addr``; a PTR load's value names ``val_node``."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_RECORD], p, np.int64(addr), np.int64(kind),
                  np.int64(node), np.int64(val_node))


@njit(cache=True)
def acc_mw(S, i, kind, val_node):
    """Count one access of ``kind`` to struct page word ``mem[i]`` (a PTR load's value names
    ``val_node``). The address and the PFN node are derived by the recording, out of line: a
    site is a load, a branch and a call, with no division (and its ZeroDivisionError path)
    inlined into the hot loops."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_RECORD], p, np.int64(i),
                  np.int64(kind | KIND_MEMWORD), np.int64(NONODE), np.int64(val_node))


@njit(cache=True)
def acc_k(S, addr, kind):
    """Count one access whose KIND_* bits the caller knows (no node logic)."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_RECORD], p, np.int64(addr), np.int64(kind),
                  np.int64(NONODE), np.int64(NONODE))


@njit(cache=True)
def acc_noptr(S, on):
    """While ``on``, PTR loads count as plain (DEP-able) loads (see the module doc)."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_NOPTR], p, np.int64(1 if on else 0), 0, 0, 0)


@njit(cache=True)
def _begin(p, cls):
    A = block(p)
    d = A[A_DEPTH]
    A[A_DEPTH] = d + 1
    if d > 0:
        return                                  # nested: part of the outer operation
    A[A_CLASS] = cls
    A[A_PTRLVL] = 0
    A[A_CHAIN] = 0
    A[A_SEQ] += 1
    A[A_PTRNODE] = NONODE
    A[A_NOPTR] = 0
    A[A_LOADS] = 0
    A[A_STORES] = 0
    A[A_LINES] = 0
    A[A_LTFILL] = 0
    A[A_OPFIRST] = A[A_LOGN]


@njit(cache=True)
def op_begin(S, cls):
    """Open an operation of class ``cls`` (nested operations belong to the outermost)."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_BEGIN], p, np.int64(cls), 0, 0, 0)


@njit(cache=True)
def _end(p):
    A = block(p)
    d = A[A_DEPTH] - 1
    A[A_DEPTH] = d
    if d > 0:
        return
    r = A[A_OFF_CT] + A[A_CLASS] * NCOUNT
    A[r + CT_OPS] += 1
    A[r + CT_LOADS] += A[A_LOADS]
    A[r + CT_STORES] += A[A_STORES]
    A[r + CT_LINES] += A[A_LINES]
    A[r + CT_CHAIN_SUM] += A[A_CHAIN]
    if A[A_CHAIN] > A[r + CT_CHAIN_MAX]:
        A[r + CT_CHAIN_MAX] = A[A_CHAIN]
    if A[A_LOGCAP] > 0 and A[A_DROPPED] == 0:
        n = A[A_OPN]
        if n < A[A_OPCAP]:
            A[A[A_OFF_OPS] + n] = (A[A_OPFIRST] << 8) | A[A_CLASS]
            A[A_OPN] = n + 1
        else:
            A[A_DROPPED] = 1
    if A[A_DROPPED]:
        A[A_LOGN] = A[A_OPFIRST]                 # the log keeps whole operations only


@njit(cache=True)
def op_end(S):
    """Close the operation opened by the matching op_begin()."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_END], p, 0, 0, 0, 0)


@njit(cache=True)
def _refine(p, lo, hi, cls):
    A = block(p)
    if A[A_DEPTH] > 0 and lo <= A[A_CLASS] <= hi:
        A[A_CLASS] = cls


@njit(cache=True)
def op_refine(S, lo, hi, cls):
    """The open operation becomes class ``cls`` if its class is in ``[lo, hi]`` (the path an
    alloc_pages()/free_pages() took; an enclosing folio_alloc() keeps its class)."""
    p = acc_word(S)
    if unlikely(p != 0):
        _call_out(carray(_as_ptr(p), NHDR)[A_FN_REFINE], p, np.int64(lo), np.int64(hi),
                  np.int64(cls), 0)


# ---- the out-of-line recording entry points (C ABI), built when accounting is first enabled --

_CALLBACKS: dict[str, object] = {}


def callbacks() -> dict[str, object]:
    """Addresses of the C-callable recording functions, for A_FN_* of every block (compiled,
    or loaded from numba's cache, the first time accounting is enabled in a process)."""
    if not _CALLBACKS:
        from numba import cfunc

        sig = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

        @cfunc(sig, cache=True)
        def record_c(p, addr, kind, node, val_node):
            _record(p, np.uint64(addr), kind, node, val_node)

        @cfunc(sig, cache=True)
        def begin_c(p, cls, _b, _c, _d):
            _begin(p, cls)

        @cfunc(sig, cache=True)
        def end_c(p, _a, _b, _c, _d):
            _end(p)

        @cfunc(sig, cache=True)
        def noptr_c(p, on, _b, _c, _d):
            block(p)[A_NOPTR] = on

        @cfunc(sig, cache=True)
        def refine_c(p, lo, hi, cls, _d):
            _refine(p, lo, hi, cls)

        _CALLBACKS.update(record=record_c.address, begin=begin_c.address, end=end_c.address,
                          noptr=noptr_c.address, refine=refine_c.address,
                          _keep=(record_c, begin_c, end_c, noptr_c, refine_c))
    return _CALLBACKS
