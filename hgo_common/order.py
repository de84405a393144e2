"""Coordinate orders C_k (paper §3, Algorithm 1 line 1; appendix C.3 for layered models).

C_k travels on the wire as a seed, and the server and every worker must expand it to
the same permutation forever, whatever numpy they run. numpy's ``Generator`` streams
may change between releases; the legacy ``RandomState`` (MT19937) stream and its
``permutation`` are frozen by numpy's compatibility policy (NEP 19), so that is what
we use. ``tests/test_order.py`` pins golden vectors.

Three orders exist:

* ``flat``: a uniform random permutation of ``range(d)``.
* ``stratified``: for models made of parameter groups (an MLP's layers), blocks
  balanced across layers *weight by weight*. We shuffle each group with its own
  permutation and interleave them so that *every* prefix of length p holds
  ``floor(p * n_g / d)`` or ``ceil(p * n_g / d)`` coordinates of each group g (Balinski
  and Young's "quota" property, which holds for every p at once).
* ``units``: blocks built *per unit* (neuron), the paper's appendix C.3 for neural
  networks; see :func:`unit_order`. Every prefix that ends where a unit is complete is
  the sub-network spanned by the units chosen so far (for 784-30-10, the paper's block
  [98, 20, 10] is the sub-network of 98 input units, 20 hidden units and the 10
  outputs), not a scatter of individual weights.

Our reading of appendix C.3 (as quoted in issue 22; the paper's PDF could not be read
here) and of the authors' code (``karimboubouh/HgO`` ``src/network.py``, v1.0 372202e and
627b9f7 alike): the server draws one permutation of the units of every layer but the
last (``get_shuffled_grad_indices``: ``np.random.permutation`` of the 784 inputs and of
the 30 hidden units, ``np.arange(10)`` for the outputs); a block lists how many units of
each layer a worker takes, [k_0, k_1, ..., k_L] with k_L the number of outputs (all of
them, always); the weight W_l[o, i] from unit i of layer l-1 to unit o of layer l is in
the block iff both units are, and the bias b_l[o] iff unit o is (``_take_step_dnn``:
``w[np.ix_(block[l + 1], block[l])]``). So a block is the rows of W_l of the chosen units
of layer l, restricted to the columns of the chosen units of layer l - 1. The authors
split a worker's unit budget across the layers by ``np.random.multinomial`` in
proportion to the layer sizes (``Worker.get_block``); we add units in that proportion
deterministically (the stratified pattern over the unit counts), so the expected split is
theirs and every worker's block is a prefix of one C_k, as HGO's nested blocks need. The
block [98, 20, 10] is an example shape; a proportional schedule passes through
[98, 3 or 4, 10] and [522 or 523, 20, 10] instead (:func:`unit_block` builds any shape).

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
import itertools
from collections.abc import Sequence

import numpy as np

SEED_LIMIT = 2**32
ORDERS = ("flat", "stratified", "units")


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


@functools.lru_cache(maxsize=16)
def _group_slots(sizes: tuple[int, ...]) -> np.ndarray:
    """Positions of group 0, then group 1, ... each in increasing order: the j-th drawn
    coordinate of group g goes to g's j-th position. Cached with the pattern: the stable
    argsort costs about 0.1 s a round at d = 1.7 M (the cnn-cifar model), on the server and
    on every worker."""
    slots = np.argsort(_group_pattern(sizes), kind="stable")
    slots.setflags(write=False)
    return slots


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
    slots = _group_slots(tuple(sizes))
    order = np.empty_like(coords)
    order[slots] = coords
    return order.astype(np.int64)


def layer_sizes_from_groups(groups: Sequence[int]) -> tuple[int, ...]:
    """Unit counts (s_0, ..., s_L) of an MLP from its parameter groups (W_1, b_1, ..., W_L, b_L).

    ``hgo_common.models.mlp.MLP.groups`` lists ``s_l * s_{l-1}`` and ``s_l`` per layer; the
    server sends these groups to the workers, so both sides recover the layers from them.

    Raises
    ------
    ValueError
        Groups that are not (weight, bias) pairs of chained fully connected layers.
    """
    g = [int(x) for x in groups]
    bad = ValueError(
        f"the units order needs fully connected layers, groups (W_1, b_1, ..., W_L, b_L) with "
        f"|W_l| = s_l * s_(l-1) and |b_l| = s_l; got groups {g}"
    )
    if len(g) < 2 or len(g) % 2 or any(x < 1 for x in g):
        raise bad
    sizes = [g[0] // g[1]]
    for w, b in zip(g[0::2], g[1::2], strict=True):
        if w != b * sizes[-1]:
            raise bad
        sizes.append(b)
    return tuple(sizes)


def _unit_coords(sizes: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Offsets of W_l and b_l in the flat vector (hgo_common.models.mlp layout)."""
    w_off, b_off, off = [], [], 0
    for n_in, n_out in itertools.pairwise(sizes):
        w_off.append(off)
        b_off.append(off + n_out * n_in)
        off += n_out * n_in + n_out
    return w_off, b_off


def unit_block(layer_sizes: Sequence[int], units: Sequence[Sequence[int]]) -> np.ndarray:
    """The coordinates of the sub-network spanned by the given units of every layer.

    ``units[l]`` lists the chosen units of layer l (l = 0 the inputs, L the outputs). The
    weight W_l[o, i] (o in layer l, i in layer l - 1) is in the block iff both units are;
    the bias b_l[o] iff o is. For 784-30-10 and 98 inputs, 20 hidden units and the 10
    outputs (the paper's [98, 20, 10]): 20·98 + 20 + 10·20 + 10 = 2,190 coordinates.

    Returns
    -------
    coords : ndarray of int64, sorted
    """
    sizes = tuple(int(s) for s in layer_sizes)
    if len(units) != len(sizes):
        raise ValueError(
            f"units must list the chosen units of each of the {len(sizes)} layers, got {len(units)}"
        )
    sel = [np.asarray(u, dtype=np.int64) for u in units]
    for layer, (u, n) in enumerate(zip(sel, sizes, strict=True)):
        if u.size and (u.min() < 0 or u.max() >= n or np.unique(u).size != u.size):
            raise ValueError(f"layer {layer}: units must be distinct ids in [0, {n}), got {u.tolist()}")
    w_off, b_off = _unit_coords(sizes)
    parts = []
    for layer in range(1, len(sizes)):
        rows, cols = sel[layer], sel[layer - 1]
        parts.append((w_off[layer - 1] + rows[:, None] * sizes[layer - 1] + cols[None, :]).ravel())
        parts.append(b_off[layer - 1] + rows)
    return np.sort(np.concatenate(parts)).astype(np.int64)


def unit_order(seed: int, layer_sizes: Sequence[int]) -> np.ndarray:
    """Permutation of the d weights and biases of an MLP whose prefixes are sub-networks.

    One permutation per layer of units except the outputs (legacy ``RandomState``, drawn
    in layer order); the output units are all in every block, as in the authors' code.
    The units of layers 0..L-1 are added one at a time in the stratified pattern of
    their counts (every prefix of the unit schedule holds ``floor`` or ``ceil`` of each
    layer's share); adding unit u of layer l appends, in this order, its incoming
    weights from the units of layer l - 1 already present (in their order of arrival),
    its bias, and its outgoing weights to the units of layer l + 1 already present. The
    output biases come first. So the prefix that ends after any unit is exactly
    :func:`unit_block` of the units added so far.

    Returns
    -------
    order : ndarray of shape (d,), dtype int64
    """
    sizes = tuple(int(s) for s in layer_sizes)
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"layer sizes must be >= 2 positive ints, got {list(sizes)}")
    rs = np.random.RandomState(_check_seed(seed))
    perms = [rs.permutation(n).astype(np.int64) for n in sizes[:-1]] + [np.arange(sizes[-1], dtype=np.int64)]
    w_off, b_off = _unit_coords(sizes)
    L = len(sizes) - 1
    present = [0] * L + [sizes[-1]]  # units of each layer added so far (outputs: all)
    parts: list[np.ndarray] = [b_off[L - 1] + perms[L]]
    # Units of layers 0..L-1 in proportion to their counts; a Python loop over units
    # (824 for 784-30-10), each step one vectorized slice of coordinates.
    pattern = _group_pattern(sizes[:-1]) if L > 1 else np.zeros(sizes[0], dtype=np.int64)
    for layer in pattern.tolist():
        u = perms[layer][present[layer]]
        if layer >= 1:  # incoming weights W_layer[u, i] from the present units of layer - 1, then b
            cols = perms[layer - 1][: present[layer - 1]]
            parts.append(w_off[layer - 1] + u * sizes[layer - 1] + cols)
            parts.append(np.array([b_off[layer - 1] + u], dtype=np.int64))
        rows = perms[layer + 1][: present[layer + 1]]  # outgoing W_(layer+1)[o, u]
        parts.append(w_off[layer] + rows * sizes[layer] + u)
        present[layer] += 1
    out = np.concatenate(parts).astype(np.int64)
    if out.size != sum(s_out * (s_in + 1) for s_in, s_out in itertools.pairwise(sizes)):
        raise AssertionError(f"units order: {out.size} coordinates for layers {sizes}")  # cannot happen
    return out


def make_order(seed: int, d: int, kind: str = "flat", groups: Sequence[int] = ()) -> np.ndarray:
    """Expand a round's order seed: the one function the server and the workers share.

    ``kind`` is one of :data:`ORDERS`; ``groups`` are the model's parameter groups
    (``stratified``: any; ``units``: an MLP's (W_1, b_1, ..., W_L, b_L)).
    """
    if kind == "flat" or (kind == "stratified" and len(groups) <= 1):
        return flat_order(seed, d)
    if kind in ("stratified", "units") and sum(groups) != d:
        raise ValueError(f"{kind} groups {list(groups)} sum to {sum(groups)}, not d={d}")
    if kind == "stratified":
        return stratified_order(seed, groups)
    if kind == "units":
        return unit_order(seed, layer_sizes_from_groups(groups))
    raise ValueError(f"unknown order kind {kind!r}; expected one of {ORDERS}")


def round_seed(run_seed: int, round_index: int) -> int:
    """The order seed of round k, derived from the run seed (reproducible runs)."""
    ss = np.random.SeedSequence([int(run_seed) % SEED_LIMIT, int(round_index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])
