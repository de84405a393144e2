"""Property-based fuzzing of hostile input (hypothesis).

1. The round collector (hgo_common.collector) against a tiny reference model: random and
   mutated chunk sequences (valid streams with offsets shifted, rounds changed, bytes cut,
   NaN/inf inserted, slots out of range, rounds closed underneath). Invariants: nothing but
   ``ChunkRejected`` ever escapes; a rejected chunk changes nothing; prefixes only grow
   within a round; the buffer equals the accepted values up to each prefix and is untouched
   beyond it; values inside a prefix are finite.
2. The real server over a real channel (added once the server runs): random/mutated
   WorkerMessages; the server never crashes and still completes a valid round.

Example counts are kept modest for CI (each test well under a minute on 2 shared cores);
``HGO_FUZZ_EXAMPLES=N`` raises them for long runs (numbers in docs/reliability.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hgo_common import collector as col
from hgo_common.collector import ChunkRejected, RoundCollector

FUZZ_EXAMPLES = int(os.environ.get("HGO_FUZZ_EXAMPLES", "0"))


def _examples(default: int) -> int:
    return FUZZ_EXAMPLES or default


# ----------------------------------------------------------------------------- collector


@dataclass
class Ref:
    """The reference: what the collector must hold after every operation."""

    d: int
    round: int | None = None
    closed: bool = True
    q: int = 0
    rows: list[list[float]] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    gone: list[bool] = field(default_factory=list)


# One operation: (kind, a, b, c, mutation, payload seed). Interpreted against the current
# reference state so that most chunks are plausible and mutations hit the edge cases.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["chunk"] * 8 + ["start", "close", "drop"]),
        st.integers(-2, 9),  # slot
        st.integers(0, 40),  # values count (n)
        st.sampled_from(
            ["valid"] * 6
            + [
                "gap",
                "overlap",
                "past-d",
                "odd-bytes",
                "nan",
                "inf",
                "old-round",
                "future-round",
                "oversized",
                "random-offset",
                "empty",
            ]
        ),
        st.integers(0, 2**31 - 1),  # payload seed
    ),
    min_size=1,
    max_size=80,
)


def _payload(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32) * np.float32(rng.choice([1e-3, 1.0, 1e30]))


@settings(
    max_examples=_examples(1000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(d=st.integers(1, 64), max_chunk=st.integers(1, 48), q0=st.integers(0, 6), ops=OPS)
def test_collector_survives_random_and_mutated_chunks(
    d: int, max_chunk: int, q0: int, ops: list[tuple[str, int, int, str, int]]
) -> None:
    c = RoundCollector(d, max_chunk_values=max_chunk)
    ref = Ref(d=d)
    next_round = 0

    def start(q: int) -> None:
        nonlocal next_round
        c.start(next_round, q)
        ref.round, ref.closed, ref.q = next_round, False, q
        ref.rows = [[] for _ in range(q)]
        ref.truncated = [False] * q
        ref.gone = [False] * q
        next_round += 1

    start(q0)
    for kind, slot, n, mutation, seed in ops:
        rng = np.random.default_rng(seed)
        if kind == "start":
            start(int(rng.integers(0, 7)))
            continue
        if kind == "close":
            prefixes = c.close()
            ref.closed = True
            assert prefixes.tolist() == [len(r) for r in ref.rows]
            continue
        if kind == "drop":
            if 0 <= slot < ref.q:
                c.drop_slot(slot)
                ref.gone[slot] = True
            else:
                with pytest.raises(ChunkRejected) as info:
                    c.drop_slot(slot)
                assert info.value.reason == col.BAD_SLOT
            continue

        # ---- a chunk
        assert ref.round is not None
        prefix = len(ref.rows[slot]) if 0 <= slot < ref.q else 0
        offset, round_index = prefix, ref.round
        vec = _payload(rng, n)
        values: bytes | np.ndarray = vec.tobytes()
        if mutation == "gap":
            offset = prefix + 1 + int(rng.integers(0, 5))
        elif mutation == "overlap":
            offset = prefix - 1 - int(rng.integers(0, max(1, prefix)))
        elif mutation == "past-d":
            offset = prefix
            vec = _payload(rng, max(n, d - prefix + 1))
            values = vec.tobytes()
        elif mutation == "odd-bytes":
            values = vec.tobytes() + bytes(int(rng.integers(1, 4)))
        elif mutation in ("nan", "inf") and n:
            vec[int(rng.integers(0, n))] = np.nan if mutation == "nan" else -np.inf
            values = vec.tobytes()
        elif mutation == "old-round":
            round_index = ref.round - 1 - int(rng.integers(0, 3))
        elif mutation == "future-round":
            round_index = ref.round + 1 + int(rng.integers(0, 3))
        elif mutation == "oversized":
            vec = _payload(rng, max_chunk + 1 + int(rng.integers(0, 4)))
            values = vec.tobytes()
        elif mutation == "random-offset":
            offset = int(rng.integers(-3, d + 5))
        elif mutation == "empty":
            vec = vec[:0]
            values = b""

        before_buf = c.values.copy()
        before_prefix = c.prefixes
        try:
            res = c.add(slot, round_index, offset, values)
        except ChunkRejected as exc:
            assert exc.fatal
            assert exc.reason in col.FATAL_REASONS
            # a rejected chunk changes nothing
            np.testing.assert_array_equal(c.values, before_buf)
            np.testing.assert_array_equal(c.prefixes, before_prefix)
            # and it was really illegal (the documented order of checks)
            n_vals = (len(values) // 4) if isinstance(values, bytes) else int(np.asarray(values).size)
            slot_ok = 0 <= slot < ref.q
            legal = round_index < ref.round or (
                round_index == ref.round
                and (not isinstance(values, bytes) or len(values) % 4 == 0)
                and n_vals <= max_chunk
                and (
                    ref.closed
                    or (slot_ok and (ref.truncated[slot] or (offset == prefix and offset + n_vals <= d)))
                )
            )
            assert not legal, f"legal chunk rejected: {exc.reason}: {exc}"
            continue
        # accepted (fully or partly) or dropped
        assert res.accepted + res.dropped == (
            len(values) // 4 if isinstance(values, bytes) else int(np.asarray(values).size)
        )
        if res.reason == col.LATE:
            assert res.accepted == 0
            assert ref.closed or round_index < ref.round
        elif not (0 <= slot < ref.q):
            raise AssertionError(f"chunk for slot {slot} outside [0, {ref.q}) was not rejected: {res}")
        elif ref.truncated[slot]:
            assert res.accepted == 0 and res.reason == col.NON_FINITE
        else:
            assert offset == prefix
            v = np.asarray(values if not isinstance(values, bytes) else np.frombuffer(values, "<f4"))
            head = v[: res.accepted]
            ref.rows[slot].extend(np.asarray(head, dtype=np.float32).tolist())
            if res.reason == col.NON_FINITE:
                ref.truncated[slot] = True
                assert not np.isfinite(v[res.accepted])
            assert res.prefix == len(ref.rows[slot])
        # invariants after every accepted operation
        prefixes = c.prefixes
        assert np.all(prefixes >= before_prefix[: len(prefixes)]), "prefix went backwards"
        assert prefixes.tolist() == [len(r) for r in ref.rows]
        buf = c.values
        for i, row in enumerate(ref.rows):
            np.testing.assert_array_equal(buf[i, : len(row)], np.asarray(row, dtype=np.float32))
            # beyond the prefix: untouched by this operation
            np.testing.assert_array_equal(buf[i, len(row) :], before_buf[i, len(row) :])
            assert np.isfinite(buf[i, : len(row)]).all(), f"non-finite value inside slot {i}'s prefix"


def test_collector_float64_values_beyond_float32_range() -> None:
    """The in-process path hands float64 arrays; 1e300 is finite in float64 but overflows the
    float32 buffer. The non-finite policy must apply to what is stored: prefix ends there."""
    c = RoundCollector(8, max_chunk_values=8)
    c.start(0, 1)
    with np.errstate(over="ignore"):
        res = c.add(0, 0, 0, np.array([1.0, 2.0, 1e300, 4.0]))
    assert np.isfinite(c.values[0, : c.prefixes[0]]).all(), (res, c.values[0, :4])
    assert res.prefix == 2 and res.reason == col.NON_FINITE
