"""Coordinate orders C_k (paper §3, Algorithm 1 line 1; appendix C.3 for layered models).

C_k travels on the wire as a seed, and the server and every worker must expand it to
the same permutation forever, whatever numpy they run. numpy's ``Generator`` streams
may change between releases; the legacy ``RandomState`` (MT19937) stream and its
``permutation`` are frozen by numpy's compatibility policy (NEP 19), so that is what
we use. ``tests/test_order.py`` pins golden vectors.

Two orders exist:

* ``flat``: a uniform random permutation of ``range(d)``.
* ``stratified``: for models made of parameter groups (an MLP's layers), the paper
  balances blocks across layers. We shuffle each group with its own permutation and
  interleave them so that *every* prefix of length p holds ``floor(p * n_g / d)`` or
  ``ceil(p * n_g / d)`` coordinates of each group g (Balinski and Young's "quota"
  property, which holds for every p at once).

How the interleaving is built: the j-th coordinate (j = 0, 1, ...) of group g may not
come before position ``floor(j d / n_g) + 1`` (else a prefix exceeds its ceiling) and
must come by position ``ceil((j + 1) d / n_g)`` (else a prefix falls below its floor),
positions counted from 1. Filling positions 1..d in turn with the released
coordinate of earliest deadline (ties: lower group index) meets every window; EDF is
optimal for unit jobs and a schedule exists (Balinski & Young, "The Quota Method of
Apportionment", Amer. Math. Monthly 82, 1975). Sorting keys (a divisor method such as
keys (j + 1/2) / n_g) cannot guarantee the property: with one large group and several
one-coordinate groups it is off by about half the number of groups. The pattern
depends only on the group sizes, so it is computed once per model (cached) and a
round only draws the per-group permutations.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence

import numpy as np

SEED_LIMIT = 2**32
ORDERS = ("flat", "stratified")


def _check_seed(seed: int) -> int:
    if not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"order seed must be in [0, 2**32), got {seed}")
    return int(seed)


def flat_order(seed: int, d: int) -> np.ndarray:
    """Uniform random permutation of ``range(d)`` from ``seed``.

    Returns
    -------
    order : ndarray of shape (d,), dtype int64
    """
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    rs = np.random.RandomState(_check_seed(seed))
    return rs.permutation(d).astype(np.int64)


@functools.lru_cache(maxsize=16)
def _group_pattern(sizes: tuple[int, ...]) -> np.ndarray:
    """Group index at each position of the stratified order (see the module docstring).

    A sequential earliest-deadline-first pass over the d positions with two heaps of at
    most one pending coordinate per group (O(d log G)); run once per model shape and
    cached, so rounds never pay for it.
    """
    d = sum(sizes)
    pattern = np.empty(d, dtype=np.int64)
    nxt = [0] * len(sizes)  # next unscheduled coordinate of each group
    ready: list[tuple[int, int]] = []  # (deadline, group) of released coordinates
    waiting: list[tuple[int, int]] = [(1, g) for g in range(len(sizes))]  # (release, group)
    for pos in range(1, d + 1):
        while waiting and waiting[0][0] <= pos:
            _, g = heapq.heappop(waiting)
            heapq.heappush(ready, (-(-(nxt[g] + 1) * d // sizes[g]), g))
        deadline, g = heapq.heappop(ready)
        if deadline < pos:  # cannot happen (EDF is optimal and a schedule exists)
            raise AssertionError(f"stratified order: missed deadline for group {g} at {pos}")
        pattern[pos - 1] = g
        nxt[g] += 1
        if nxt[g] < sizes[g]:
            heapq.heappush(waiting, (nxt[g] * d // sizes[g] + 1, g))
    pattern.setflags(write=False)
    return pattern


def stratified_order(seed: int, group_sizes: Sequence[int]) -> np.ndarray:
    """Permutation of ``range(sum(group_sizes))`` balanced across parameter groups.

    Group g occupies the global coordinates ``[offset_g, offset_g + n_g)``. Every
    prefix of the returned order of length p contains ``floor(p * n_g / d)`` or
    ``ceil(p * n_g / d)`` coordinates of group g.

    Returns
    -------
    order : ndarray of shape (d,), dtype int64
    """
    sizes = [int(n) for n in group_sizes]
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"group sizes must be a non-empty list of positive ints, got {sizes}")
    rs = np.random.RandomState(_check_seed(seed))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    coords = np.concatenate([off + rs.permutation(n) for off, n in zip(offsets, sizes, strict=True)])
    # Positions of group 0, then group 1, ... each in increasing order: the j-th
    # drawn coordinate of group g goes to g's j-th position.
    slots = np.argsort(_group_pattern(tuple(sizes)), kind="stable")
    order = np.empty_like(coords)
    order[slots] = coords
    return order.astype(np.int64)


def make_order(seed: int, d: int, kind: str = "flat", groups: Sequence[int] = ()) -> np.ndarray:
    """Expand a round's order seed: the one function the server and the workers share."""
    if kind == "flat" or (kind == "stratified" and len(groups) <= 1):
        return flat_order(seed, d)
    if kind == "stratified":
        if sum(groups) != d:
            raise ValueError(f"stratified groups {list(groups)} sum to {sum(groups)}, not d={d}")
        return stratified_order(seed, groups)
    raise ValueError(f"unknown order kind {kind!r}; expected one of {ORDERS}")


def round_seed(run_seed: int, round_index: int) -> int:
    """The order seed of round k, derived from the run seed (reproducible runs)."""
    ss = np.random.SeedSequence([int(run_seed) % SEED_LIMIT, int(round_index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])
