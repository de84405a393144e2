"""Splitting a training set into worker shards: IID and the usual non-IID schemes.

Paper §6 (Fig. 4) trains on a non-IID split; docs/design.md §5 asks for both "a few
classes per worker" and Dirichlet splits. Every scheme is seeded by the ``rng`` it is
given, puts every index in exactly one shard, and never returns an empty shard: when
that is impossible (fewer examples than shards, or fewer class pieces than classes)
it raises ValueError instead.

Schemes (``parse_partition`` validates the strings):

``"iid"``
    A random permutation cut into ``n_shards`` parts whose sizes differ by at most 1.

``"classes:K"``
    The standard pathological non-IID split (McMahan et al., AISTATS 2017): the
    examples, sorted by label, are cut into ``n_shards * K`` pieces and every shard gets
    K random pieces. Our pieces never straddle two classes — each class is cut into
    its own pieces, their number proportional to the class size (largest remainder,
    at least one per class) — so a shard holds data from **at most K classes** (fewer
    when two of its pieces come from the same class). Needs ``n_shards * K >=`` the
    number of classes present, otherwise some class could not be placed.

``"dirichlet:ALPHA"``
    For every class, proportions over the shards are drawn from Dirichlet(ALPHA, ...,
    ALPHA) (Hsu, Qi & Brown 2019) and the class's shuffled examples are cut at those
    proportions. Small ALPHA is very skewed, large ALPHA approaches IID. Fix for empty
    shards: while some shard is empty, it takes one random example from the currently
    largest shard (so shard sizes >= 1 and the class skew is otherwise unchanged).

``"hardware:W:C"`` or ``"hardware:W:C:R"``
    Hardware and data correlated (what HGO's claim is about: data held only by weak
    devices). The first W shards — the weak workers, since
    :func:`hgo_common.profiles.assign` lists weak workers first, so W =
    ``profiles.counts(n, mix)[0]`` — share the examples of the C *weak classes* IID;
    the other n − W shards share the remaining classes IID. The weak classes are the C
    smallest class labels present (0..C−1 for MNIST). With R > 0 (R in [0, 1)) a fraction R
    of every weak class's examples goes to the other shards instead, so the weak classes
    are rare rather than absent among the fast workers. Needs 1 <= W < n and 1 <= C <
    number of classes.

Class-based schemes need integer labels (classification); regression targets raise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PartitionScheme(NamedTuple):
    """A parsed scheme: ``kind`` in {"iid", "classes", "dirichlet", "hardware"} and its
    parameter (K for classes, ALPHA for dirichlet, None for iid, (W, C, R) for hardware)."""

    kind: str
    value: float | int | tuple[int, int, float] | None


def _parse_hardware(scheme: str, arg: str) -> PartitionScheme:
    parts = arg.split(":")
    bad = ValueError(
        f"partition {scheme!r}: expected hardware:W:C or hardware:W:C:R with integers W >= 1 "
        f"(weak shards), C >= 1 (weak classes) and R in [0, 1) (share of the weak classes "
        f"given to the other shards)"
    )
    if len(parts) not in (2, 3):
        raise bad
    try:
        w, c = int(parts[0]), int(parts[1])
        r = float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        raise bad from None
    if w < 1 or c < 1 or not (np.isfinite(r) and 0.0 <= r < 1.0):
        raise bad
    return PartitionScheme("hardware", (w, c, r))


SCHEMES = ("iid", "classes:K", "dirichlet:ALPHA", "hardware:W:C[:R]")


def parse_partition(scheme: str) -> PartitionScheme:
    """Validate a scheme string ("iid", "classes:K" with K >= 1, "dirichlet:ALPHA" with ALPHA > 0).

    Raises
    ------
    ValueError
        Naming the bad value and the accepted forms.
    """
    s = str(scheme).strip()
    kind, sep, arg = s.partition(":")
    if kind == "iid" and not sep:
        return PartitionScheme("iid", None)
    if kind == "classes" and sep:
        try:
            k = int(arg)
        except ValueError:
            k = 0
        if k >= 1 and str(k) == arg.strip():
            return PartitionScheme("classes", k)
        raise ValueError(f"partition {scheme!r}: K in classes:K must be an integer >= 1, got {arg!r}")
    if kind == "hardware" and sep:
        return _parse_hardware(scheme, arg)
    if kind == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if np.isfinite(alpha) and alpha > 0:
            return PartitionScheme("dirichlet", alpha)
        raise ValueError(
            f"partition {scheme!r}: ALPHA in dirichlet:ALPHA must be a finite number > 0, got {arg!r}"
        )
    raise ValueError(f"unknown partition scheme {scheme!r}; expected one of {list(SCHEMES)}")


def _class_labels(y: np.ndarray, scheme: str) -> np.ndarray:
    yi = y.astype(np.int64)
    if not np.array_equal(yi, y):
        raise ValueError(
            f"partition {scheme!r} needs integer class labels, got {y.dtype} values like {y[:3]}"
        )
    return yi


def partition(y: np.ndarray, n_shards: int, scheme: str, rng: np.random.Generator | int) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``n_shards`` disjoint, non-empty index arrays.

    Parameters
    ----------
    y : array of shape (n,)
        Labels (class ids for the class-based schemes).
    n_shards : int
        Number of shards (workers), >= 1.
    scheme : str
        "iid", "classes:K" or "dirichlet:ALPHA" (see the module docstring).
    rng : numpy Generator or int seed

    Returns
    -------
    shards : list of n_shards int64 arrays, each sorted, together a partition of range(n)
    """
    parsed = parse_partition(scheme)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"partition {scheme!r}: y must be 1-D, got shape {y.shape}")
    n = y.shape[0]
    k = int(n_shards)
    if k < 1:
        raise ValueError(f"partition {scheme!r}: n_shards must be >= 1, got {n_shards}")
    if n < k:
        raise ValueError(f"partition {scheme!r}: cannot split {n} examples into {k} non-empty shards")
    if parsed.kind == "iid":
        parts = np.array_split(gen.permutation(n), k)
    elif parsed.kind == "classes":
        assert isinstance(parsed.value, int)
        parts = _by_classes(_class_labels(y, scheme), k, parsed.value, gen, scheme)
    elif parsed.kind == "hardware":
        assert isinstance(parsed.value, tuple)
        parts = _hardware(_class_labels(y, scheme), k, parsed.value, gen, scheme)
    else:
        assert isinstance(parsed.value, float)
        parts = _dirichlet(_class_labels(y, scheme), k, parsed.value, gen)
    return [np.sort(p).astype(np.int64) for p in parts]


def _by_classes(
    y: np.ndarray, n_shards: int, k: int, rng: np.random.Generator, scheme: str
) -> list[np.ndarray]:
    classes, counts = np.unique(y, return_counts=True)
    n_pieces = n_shards * k
    if n_pieces < len(classes):
        raise ValueError(
            f"partition {scheme!r}: {n_shards} shards x {k} classes = {n_pieces} pieces cannot "
            f"cover the {len(classes)} classes present; use a larger K"
        )
    if n_pieces > counts.sum():
        raise ValueError(f"partition {scheme!r}: {n_pieces} pieces need at least that many examples")
    # Pieces per class: proportional to class size (largest remainder), at least one per
    # class, at most one per example (pieces must be non-empty). Each correction step
    # moves one piece, and there are at most ~n_classes of them.
    ideal = n_pieces * counts / counts.sum()
    per = np.clip(np.floor(ideal).astype(np.int64), 1, counts)
    while per.sum() < n_pieces:
        gap = np.where(per < counts, ideal - per, -np.inf)
        per[int(np.argmax(gap))] += 1
    while per.sum() > n_pieces:
        gap = np.where(per > 1, per - ideal, -np.inf)
        per[int(np.argmax(gap))] -= 1
    pieces: list[np.ndarray] = []
    for c, m in zip(classes, per, strict=True):
        idx = rng.permutation(np.flatnonzero(y == c))
        pieces.extend(np.array_split(idx, int(m)))
    order = rng.permutation(n_pieces)
    return [np.concatenate([pieces[j] for j in order[s * k : (s + 1) * k]]) for s in range(n_shards)]


def weak_classes(y: np.ndarray, n_classes: int) -> np.ndarray:
    """The C weak classes of ``hardware:W:C``: the C smallest class labels present in ``y``."""
    return np.unique(np.asarray(y).astype(np.int64))[: int(n_classes)]


def _hardware(
    y: np.ndarray, n_shards: int, value: tuple[int, int, float], rng: np.random.Generator, scheme: str
) -> list[np.ndarray]:
    w, c, r = value
    classes = np.unique(y)
    if not w < n_shards:
        raise ValueError(
            f"partition {scheme!r}: W = {w} weak shards must be fewer than the {n_shards} shards"
        )
    if not c < classes.size:
        raise ValueError(
            f"partition {scheme!r}: C = {c} weak classes must be fewer than "
            f"the {classes.size} classes present"
        )
    weak_cls = classes[:c]
    is_weak = np.isin(y, weak_cls)
    weak_idx = rng.permutation(np.flatnonzero(is_weak))
    n_leak = round(r * weak_idx.size)
    weak_pool, leak = weak_idx[n_leak:], weak_idx[:n_leak]
    fast_pool = rng.permutation(np.concatenate([np.flatnonzero(~is_weak), leak]))
    if weak_pool.size < w or fast_pool.size < n_shards - w:
        raise ValueError(
            f"partition {scheme!r}: too few examples for {w} weak and {n_shards - w} other shards"
        )
    return [*np.array_split(weak_pool, w), *np.array_split(fast_pool, n_shards - w)]


def _dirichlet(y: np.ndarray, n_shards: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    owner = np.empty(y.shape[0], dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        props = rng.dirichlet(np.full(n_shards, alpha))
        cuts = np.floor(np.cumsum(props)[:-1] * idx.size).astype(np.int64)
        owner[idx] = np.repeat(np.arange(n_shards), np.diff(np.concatenate([[0], cuts, [idx.size]])))
    sizes = np.bincount(owner, minlength=n_shards)
    # Documented fix: an empty shard takes one random example from the largest shard.
    for s in np.flatnonzero(sizes == 0):
        donor = int(np.argmax(sizes))
        j = rng.choice(np.flatnonzero(owner == donor))
        owner[j] = s
        sizes[donor] -= 1
        sizes[s] += 1
    by_owner = np.argsort(owner, kind="stable")
    return np.split(by_owner, np.cumsum(sizes)[:-1])
