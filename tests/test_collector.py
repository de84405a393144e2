"""hgo_common.collector: chunk validation table and the non-finite policy (pure, no network)."""

from __future__ import annotations

import numpy as np
import pytest

from hgo_common import collector, wire
from hgo_common.collector import ChunkRejected, RoundCollector


def _vals(n: int, start: float = 0.0) -> bytes:
    return wire.encode(np.arange(start, start + n, dtype=np.float32))


def _open(d: int = 10, q: int = 2, round_index: int = 3, max_chunk: int = 6) -> RoundCollector:
    c = RoundCollector(d, max_chunk_values=max_chunk)
    c.start(round_index, q)
    return c


def test_contiguous_chunks_fill_the_row_and_finish() -> None:
    c = _open()
    r1 = c.add(0, 3, 0, _vals(4))
    r2 = c.add(0, 3, 4, _vals(6, start=4))
    assert (r1.accepted, r1.prefix, r1.finished) == (4, 4, False)
    assert (r2.accepted, r2.prefix, r2.finished, r2.reason) == (6, 10, True, None)
    np.testing.assert_array_equal(c.values[0], np.arange(10, dtype=np.float32))
    np.testing.assert_array_equal(c.prefixes, [10, 0])
    assert c.finished().tolist() == [True, False]
    assert not c.all_finished()


@pytest.mark.parametrize(
    ("setup", "chunk", "reason"),
    [
        ([(0, 4)], (5, _vals(2)), collector.GAP),
        ([(0, 4)], (3, _vals(2)), collector.OVERLAP),
        ([(0, 4)], (0, _vals(1)), collector.OVERLAP),
        ([(0, 6)], (6, _vals(5)), collector.PAST_D),
        ([], (0, b"\x00\x00\x80"), collector.BAD_LENGTH),
        ([], (0, _vals(7)), collector.OVERSIZED),
    ],
    ids=["gap", "overlap", "repeat-from-0", "past-d", "bad-length", "oversized"],
)
def test_fatal_rejections(setup: list[tuple[int, int]], chunk: tuple[int, bytes], reason: str) -> None:
    c = _open()
    for off, n in setup:
        c.add(0, 3, off, _vals(n, start=off))
    before = c.values[0].copy()
    with pytest.raises(ChunkRejected) as info:
        c.add(0, 3, *chunk)
    assert info.value.reason == reason and info.value.fatal
    assert str(chunk[0]) in str(info.value) or reason in (collector.BAD_LENGTH, collector.OVERSIZED)
    # A rejected chunk changes nothing.
    np.testing.assert_array_equal(c.values[0], before)
    assert c.prefixes[0] == sum(n for _, n in setup)


def test_future_round_is_fatal_and_past_round_is_late() -> None:
    c = _open(round_index=3)
    with pytest.raises(ChunkRejected) as info:
        c.add(0, 4, 0, _vals(2))
    assert info.value.reason == collector.WRONG_ROUND
    assert "round 4" in str(info.value) and "3" in str(info.value)
    late = c.add(0, 2, 0, _vals(2))
    assert (late.reason, late.accepted, late.dropped) == (collector.LATE, 0, 2)
    assert c.prefixes[0] == 0


def test_closed_round_drops_chunks_as_late() -> None:
    c = _open()
    c.add(1, 3, 0, _vals(3))
    prefixes = c.close()
    np.testing.assert_array_equal(prefixes, [0, 3])
    r = c.add(1, 3, 3, _vals(2))
    assert (r.reason, r.accepted, r.dropped) == (collector.LATE, 0, 2)
    np.testing.assert_array_equal(c.prefixes, [0, 3])


def test_slot_outside_round_is_rejected() -> None:
    c = _open(q=2)
    with pytest.raises(ChunkRejected) as info:
        c.add(2, 3, 0, _vals(1))
    assert info.value.reason == collector.BAD_SLOT


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_truncates_the_prefix(bad: float) -> None:
    c = _open()
    c.add(0, 3, 0, _vals(3))
    chunk = np.array([3.0, 4.0, bad, 6.0], dtype=np.float32)
    r = c.add(0, 3, 3, wire.encode(chunk))
    assert (r.accepted, r.dropped, r.prefix, r.finished, r.reason) == (2, 2, 5, True, collector.NON_FINITE)
    np.testing.assert_array_equal(c.values[0, :5], np.arange(5, dtype=np.float32))
    # The rest of the round from that worker is ignored, whatever its offset says.
    r2 = c.add(0, 3, 7, _vals(3, start=7))
    assert (r2.accepted, r2.dropped, r2.reason) == (0, 3, collector.NON_FINITE)
    assert c.prefixes[0] == 5
    assert c.finished().tolist() == [True, False]


def test_non_finite_first_value_gives_empty_prefix() -> None:
    c = _open()
    r = c.add(1, 3, 0, wire.encode(np.array([np.nan, 1.0], dtype=np.float32)))
    assert (r.accepted, r.prefix) == (0, 0)
    c.drop_slot(0)
    assert c.all_finished()


def test_buffer_is_reused_across_rounds_and_prefixes_reset() -> None:
    c = RoundCollector(5)
    c.start(0, 3)
    buf = c.values
    c.add(2, 0, 0, _vals(5))
    c.close()
    c.start(1, 3)
    assert np.shares_memory(c.values, buf)
    np.testing.assert_array_equal(c.prefixes, [0, 0, 0])
    c.start(2, 2)  # fewer workers: same memory, smaller view
    assert c.values.shape == (2, 5) and np.shares_memory(c.values, buf)
    c.start(3, 4)  # more workers: a larger buffer
    assert c.values.shape == (4, 5)


def test_numpy_input_and_dropped_slot_finish() -> None:
    c = _open(d=4, q=2)
    c.add(0, 3, 0, np.ones(4))
    c.drop_slot(1)
    assert c.all_finished()
    with pytest.raises(ValueError, match="d must be >= 1, got 0"):
        RoundCollector(0)


def test_float64_values_beyond_float32_range_count_as_non_finite() -> None:
    # Found by tests/test_fuzz.py: the policy applies to the stored float32 values.
    c = _open(d=8, q=1)
    r = c.add(0, 3, 0, np.array([1.0, 2.0, 1e300, 4.0]))
    assert (r.prefix, r.reason) == (2, collector.NON_FINITE)
    assert np.isfinite(c.values[0, :2]).all()


# ------------------------------------------------------------ memory at large d


def test_large_buffer_returns_pages_past_each_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    from hgo_common import collector

    monkeypatch.setattr(collector, "LAZY_MIN_BYTES", 0)
    d, q = 5000, 4  # rows of 20,000 bytes: not page-aligned
    c = RoundCollector(d, max_chunk_values=d)
    assert c.release_unused() == 0  # nothing allocated yet
    rng = np.random.default_rng(0)
    c.start(0, q)
    full = rng.standard_normal((q, d)).astype(np.float32)
    for i in range(q):
        c.add(i, 0, 0, full[i])
    c.close()
    np.testing.assert_array_equal(c.values, full)  # full rows: nothing released
    # round 1: shorter prefixes; the values up to each prefix are exactly what was sent
    prefixes = [3000, 0, 4999, 17]
    c.start(1, q)
    for i, p in enumerate(prefixes):
        if p:
            c.add(i, 1, 0, full[i, :p] * 2)
    got = c.close()
    assert got.tolist() == prefixes
    page, row = mmap.PAGESIZE, d * 4
    for i, p in enumerate(prefixes):
        np.testing.assert_array_equal(c.values[i, :p], full[i, :p] * 2)
        # every whole page past the prefix was handed back: it reads as zeros now
        start = -(-(i * row + p * 4) // page) * page
        end = ((i + 1) * row // page) * page
        if end > start:
            lo, hi = (start - i * row) // 4, (end - i * row) // 4
            assert not c.values[i, lo:hi].any()
    # blocks.aggregate on the buffer gives what it gives on a plain copy of the prefixes
    from hgo_common import blocks

    plain = np.zeros((q, d), dtype=np.float32)
    for i, p in enumerate(prefixes):
        plain[i, :p] = full[i, :p] * 2
    for rule in ("median", "krum"):
        np.testing.assert_array_equal(
            blocks.aggregate(c.values, got, v=3, rule=rule)[1],
            blocks.aggregate(plain, got, v=3, rule=rule)[1],
        )


def test_small_buffers_stay_plain_arrays() -> None:
    c = RoundCollector(100)
    c.start(0, 3)
    assert c.release_unused() == 0 and isinstance(c.values.base, np.ndarray)
