"""replay_start._repair_nb against a plain reference: the first-improvement swap search in
its documented order (each candidate against every candidate, then the per-type pools of
items without free blocks), written out without the kernel's skipping of equal-type runs."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from memdesc.analysis import replay_start as rs


def reference(typ, Fi, weight, kfree):
    nt, no = kfree.shape
    S = np.zeros((nt, no), np.int64)
    for i in range(len(typ)):
        S[typ[i]] += Fi[i]
    cand = [int(i) for i in np.flatnonzero(Fi.sum(axis=1) > 0)]
    pool = {(t, w): [] for t in range(nt) for w in range(3)}
    for i in range(len(typ)):
        if Fi[i].sum() == 0 and weight[i] <= 2:
            pool[int(typ[i]), int(weight[i])].append(i)

    def cost(t, o, s):
        return abs(s - kfree[t, o]) << o

    for passes in range(1, 21):
        improved = False
        for a in cand:
            for j in range(len(cand) + nt):
                ta, w = int(typ[a]), int(weight[a])
                if j < len(cand):
                    b = cand[j]
                else:
                    if w > 2 or j - len(cand) == ta or not pool[j - len(cand), w]:
                        continue
                    b = pool[j - len(cand), w][-1]
                tb = int(typ[b])
                if tb == ta or weight[b] != w:
                    continue
                d = Fi[b] - Fi[a]
                delta = sum(cost(ta, o, S[ta, o] + d[o]) - cost(ta, o, S[ta, o])
                            + cost(tb, o, S[tb, o] - d[o]) - cost(tb, o, S[tb, o])
                            for o in range(no))
                if delta < 0:
                    S[ta] += d
                    S[tb] -= d
                    typ[a], typ[b] = tb, ta
                    if j >= len(cand):
                        pool[tb, w].pop()
                        pool[ta, w].append(b)
                    improved = True
        if not improved:
            return passes
    return 20


def test_swaps_a_candidate_past_a_run_of_its_own_type():
    # items 0-2 Movable (type 1) with one order-0 free block each, item 3 Unmovable (0) with
    # an order-1 block; the kernel wants the order-1 block on Movable and the order-0 one on
    # Unmovable: item 0 must be tried against item 3, three positions on, past 1 and 2
    typ = np.array([1, 1, 1, 0], np.int64)
    Fi = np.zeros((4, 11), np.int64)
    Fi[:3, 0] = 1
    Fi[3, 1] = 1
    kfree = np.zeros((5, 11), np.int64)
    kfree[1, 0], kfree[1, 1], kfree[0, 0] = 2, 1, 1
    got = typ.copy()
    passes = rs._repair_nb(got, Fi, np.ones(4, np.int64), kfree)
    assert got.tolist() == [0, 1, 1, 1] and passes == 2


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
def test_repair_is_the_reference_search(data):
    n = data.draw(st.integers(1, 24))
    typ = np.array(data.draw(st.lists(st.sampled_from([0, 1, 1, 2, 3]), min_size=n,
                                      max_size=n)), np.int64)
    Fi = np.array(data.draw(st.lists(st.lists(st.sampled_from([0, 0, 0, 1, 2]), min_size=11,
                                              max_size=11), min_size=n, max_size=n)), np.int64)
    weight = np.array(data.draw(st.lists(st.sampled_from([1, 1, 2]), min_size=n, max_size=n)),
                      np.int64)
    kfree = np.array(data.draw(st.lists(st.lists(st.integers(0, 4), min_size=11, max_size=11),
                                        min_size=5, max_size=5)), np.int64)
    want = typ.copy()
    passes = reference(want, Fi, weight, kfree)
    got = typ.copy()
    assert rs._repair_nb(got, Fi, weight, kfree) == passes
    assert got.tolist() == want.tolist()
