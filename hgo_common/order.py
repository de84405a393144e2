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
  interleave them so that *every* prefix of length p holds each group g in proportion
  to its size, ``p * n_g / d``, within one coordinate: coordinate i of group g gets
  the key (i + 1/2) / n_g and the groups are merged by key (ties by group index).
"""

from __future__ import annotations

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


def stratified_order(seed: int, group_sizes: Sequence[int]) -> np.ndarray:
    """Permutation of ``range(sum(group_sizes))`` balanced across parameter groups.

    Group g occupies the global coordinates ``[offset_g, offset_g + n_g)``. Every
    prefix of the returned order of length p contains ``floor(p * n_g / d)`` or
    ``ceil(p * n_g / d)`` coordinates of group g (up to one extra from tie-breaking).

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
    keys = np.concatenate([(np.arange(n) + 0.5) / n for n in sizes])
    # np.argsort with kind="stable" keeps group order for equal keys (groups are
    # concatenated in index order), which makes the interleaving deterministic.
    return coords[np.argsort(keys, kind="stable")].astype(np.int64)


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
