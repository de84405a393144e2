"""Issue 10's eight observations, rerun as an attacker would, each asserting the held outcome.

Every test runs a real server on a loopback port (in-process, or ``hgo-server`` as a
process where its memory is measured) with ``--tokens-file``: honest identities plus one
``mallory``. Loads are CI-sized and bounded in count and time; ``HGO_ADV_SCALE=issue``
(or the ``slow`` variants) replays them with the issue's figures. What each test holds:

1. Sybil: one token = one active session; sampling and --min-workers count identities;
   w moves exactly as the honest rows allow (median).
2. Poison: rows of 3e38 never make w non-finite (row bound, finite-update guard), and
   training continues once mallory leaves.
3. Exfiltration/steering: every session of an identity gets the same, single shard; the
   honest workers' shards do not depend on what mallory held.
4. Unauthenticated memory: huge Status bodies and idle TCP connections leave the server's
   peak RSS bounded and honest workers joining and training.
5. Authenticated abuse: padded, oversized and malformed messages (late chunks included)
   are fatal and counted; floods are rate-limited; join floods refused; silent sessions
   evicted.
7. Log injection: peer strings are escaped; refused-call logging is rate-limited.
8. Declared vs measured: the round log keeps a worker's claims apart from what the
   server measured.

(Observation 6, /metrics on every interface, is issue 14's.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from hgo_common import roundlog
from hgo_common.net import credentials
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from tests.procs import ROOT, ProcessGroup, console
from tests.wireclient import Served, WireClient, join_message, serving, wait_for

pytestmark = pytest.mark.timeout(300)

HONEST = [f"honest-{i}" for i in range(5)]


def tokens_file(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "tokens"
    lines = [f"{name} tok-{name}-0123456789" for name in HONEST] + ["mallory tok-mallory-0123456789"]
    f.write_text("\n".join(lines) + "\n" + extra)
    f.chmod(0o600)
    return f


def md(name: str) -> tuple[tuple[str, str], ...]:
    return credentials.bearer_metadata(f"tok-{name}-0123456789")


async def honest_workers(s: Served, value: float = 1.0, n: int = 5) -> list[WireClient]:
    """n honest identities, each answering every task with a constant gradient ``value``."""
    out = []
    for name in HONEST[:n]:
        c = s.client(md(name))
        await c.join(name=name)
        c.respond(lambda task, d=s.core.d: np.full(d, value, dtype=np.float32))
        out.append(c)
    return out


async def close_all(clients: list[WireClient]) -> None:
    for c in clients:
        await c.close()


# The honest clients share the test process (and a loaded 2-core machine) with the
# attacker: a round may miss its deadline because *they* were starved. The tolerance is
# stated here once; tests that need every round use tau = inf (a round waits for every
# sampled honest worker, so only a dropped session could cost it the quorum).
QUORUM_SHARE = 0.9


def quorum_share(records: list[dict[str, Any]]) -> float:
    return sum(bool(r["quorum"]) for r in records) / max(1, len(records))


def scale(ci: int, issue: int) -> int:
    return issue if os.environ.get("HGO_ADV_SCALE") == "issue" else ci


# ----------------------------------------------------------------------------- 1. Sybil


async def sybil(tmp_path: Path, attempts: int) -> None:
    log_path = tmp_path / "rounds.jsonl"
    async with serving(
        q=10, v=5, rule="median", f=2, tau=float("inf"), tokens_file=str(tokens_file(tmp_path)),
        heartbeat_ms=500, log=str(log_path), min_workers=5, join_rate=1000.0,
    ) as s:  # fmt: skip
        w0 = s.core.weights.copy()
        honest = await honest_workers(s, 1.0)
        # mallory opens `attempts` sessions with one token, each sending -100 on every row
        sybils: list[WireClient] = []
        for i in range(attempts):
            c = s.client(md("mallory"))
            await c.join(name=f"sybil-{i}")
            c.respond(lambda task, d=s.core.d: np.full(d, -100.0, dtype=np.float32))
            sybils.append(c)
            assert sum(x.identity == "mallory" for x in s.core.sessions.values()) == 1
        assert len(s.core.sessions) == 6  # 5 honest + one mallory, however many she opened
        assert s.rejected("replaced") == attempts - 1
        k0 = s.core.round
        await wait_for(lambda: s.core.round >= k0 + 8, timeout=60, what="8 rounds")
        # the log holds every round applied to w, and at most one more may be applied
        # already (the aggregation thread updates w before the loop writes the record)
        w = s.core.weights
        applied = roundlog.read(log_path)
        await close_all(sybils)
        await close_all(honest)
    records = roundlog.read(log_path)
    for r in records:
        ids = [x["identity"] for x in r["workers"]]
        assert len(ids) == len(set(ids)), f"an identity sampled twice in round {r['round']}: {ids}"
        assert sum(i == "mallory" for i in ids) <= 1
        assert r["f_enforceable"] is True
    # median of five +1 rows and at most one -100 row is +1 on every coordinate: every
    # round with an update moves w by exactly -step_size (mallory cannot steer it)
    moved = sum(r["step_size"] for r in applied if r["quorum"])
    assert moved > 0
    nxt = records[len(applied)] if len(records) > len(applied) else None
    candidates = [moved] + ([moved + nxt["step_size"]] if nxt is not None and nxt["quorum"] else [])
    err = min(float(np.abs(w - (w0 - m)).max()) for m in candidates)
    assert err < 1e-4, (err, candidates)


async def test_sybil_one_token_is_one_worker(tmp_path: Path) -> None:
    await sybil(tmp_path, scale(20, 1000))


@pytest.mark.slow
async def test_sybil_one_token_is_one_worker_issue_load(tmp_path: Path) -> None:
    await sybil(tmp_path, 1000)


async def test_sybil_sessions_cannot_satisfy_min_workers(tmp_path: Path) -> None:
    # 25 mallory sessions alone: one identity, so --min-workers 3 is never reached
    async with serving(
        q=3, min_workers=3, tokens_file=str(tokens_file(tmp_path)), heartbeat_ms=500, join_rate=1000.0
    ) as s:
        sybils = []
        for i in range(25):
            c = s.client(md("mallory"))
            await c.join(name=f"sybil-{i}")
            c.respond()
            sybils.append(c)
        await asyncio.sleep(0.5)
        st = await s.status(md("honest-0"))
        assert (st.state, st.active_sessions, st.round) == ("waiting", 1, 0)
        await close_all(sybils)


async def join_flood(tmp_path: Path, seconds: float, burst: int | None) -> None:
    """mallory joins as fast as she can (``burst`` joins, or for ``seconds``)."""
    async with serving(q=3, min_workers=50, tokens_file=str(tokens_file(tmp_path)), heartbeat_ms=500) as s:
        codes: list[Any] = []
        t0 = time.monotonic()
        while (len(codes) < burst) if burst is not None else (time.monotonic() - t0 < seconds):
            c = s.client(md("mallory"))
            await c.send(join_message(name=f"flood-{len(codes)}"))
            msg = None
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                msg = await c.read(5)
            codes.append("welcome" if msg is not None and msg.HasField("welcome") else await c.call.code())
            await c.close()
        elapsed = time.monotonic() - t0
        admitted = codes.count("welcome")
        # join burst 5, then --join-rate 1 per second; never more than one active session
        assert 5 <= admitted <= 5 + elapsed + 2, (admitted, elapsed)
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == len(codes) - admitted
        assert s.rejected("join-rate") == len(codes) - admitted
        assert len(s.core.sessions) <= 1
    print(f"join flood: {len(codes)} joins in {elapsed:.1f} s, {admitted} admitted (one at a time)")


async def test_join_flood_is_refused_beyond_the_join_rate(tmp_path: Path) -> None:
    await join_flood(tmp_path, 0.0, 30)


@pytest.mark.slow
async def test_join_flood_issue_load(tmp_path: Path) -> None:
    await join_flood(tmp_path, 25.0, None)


# ----------------------------------------------------------------------------- 2. poison


async def poison(tmp_path: Path, row_bound: str, attack_rounds: int, lr: float = 0.1) -> dict[str, Any]:
    log_path = tmp_path / f"rounds-{row_bound}.jsonl"
    async with serving(
        q=6, v=4, rule="average", tau=float("inf"), tokens_file=str(tokens_file(tmp_path)),
        heartbeat_ms=500, log=str(log_path), min_workers=6, row_bound=row_bound, lr=lr,
    ) as s:  # fmt: skip
        honest = await honest_workers(s, 0.5)
        mallory = s.client(md("mallory"))
        await mallory.join(name="mallory")
        mallory.respond(lambda task, d=s.core.d: np.full(d, 3e38, dtype=np.float32))
        k0 = s.core.round
        seen: list[np.ndarray] = []
        while s.core.round < k0 + attack_rounds:
            seen.append(s.core.weights)
            await asyncio.sleep(0.02)
        w_attack_end = s.core.weights
        await mallory.close()
        await wait_for(lambda: len(s.core.sessions) == 5, what="mallory gone")
        k1 = s.core.round
        await wait_for(lambda: s.core.round >= k1 + 10, timeout=60, what="10 rounds after mallory left")
        w_after = s.core.weights
        out = {
            "finite": all(bool(np.isfinite(w).all()) and np.abs(w).max() <= 3.4028235e38 for w in seen),
            "w_attack_end": w_attack_end,
            "w_after": w_after,
            "k1": k1,
            "bounded": s.counter("hgo_bounded_rows_total"),
            "refused": s.counter("hgo_refused_updates_total"),
        }
        await close_all(honest)
    records = roundlog.read(log_path)
    out["after"] = [r for r in records if r["round"] > out["k1"]][:-1]  # the last: closed by the stop
    return out


async def test_rows_of_3e38_cannot_overflow_w_row_bound(tmp_path: Path) -> None:
    got = await poison(tmp_path, "coord:1e6", scale(20, 20))
    assert got["finite"] and np.isfinite(got["w_attack_end"]).all()
    assert got["bounded"] >= 5  # mallory's row was clipped in each round it was in
    assert got["refused"] == 0  # the bound alone kept w finite
    after = got["after"]
    assert after and all(r["quorum"] for r in after)
    # once mallory is gone w moves by exactly the honest average (0.5) per round again
    assert np.isfinite(got["w_after"]).all()
    steps = sum(r["step_size"] for r in after)
    drift = got["w_attack_end"] - got["w_after"]
    assert float(drift.min()) > 0.5 * 0.1 * 5  # at least 5 honest steps of 0.05 were applied
    assert steps > 0


async def test_rows_of_3e38_with_the_bound_off_updates_are_refused(tmp_path: Path) -> None:
    # one row in six with lr 10: (3e38 / 6) * 10 overflows float32 in the first round
    got = await poison(tmp_path, "off", scale(20, 20), lr=10.0)
    assert got["finite"]  # w never left float32's finite range
    assert got["refused"] >= 1 and got["bounded"] == 0
    after = got["after"]
    assert after and all(r["quorum"] and r["refused"] is None for r in after)
    assert np.isfinite(got["w_after"]).all()
    assert not np.array_equal(got["w_after"], got["w_attack_end"])  # training goes on


def test_poison_guard_in_the_core_also_guards_the_simulator() -> None:
    from hgo_common import rounds

    d = 8
    order = np.arange(d)
    vals = np.vstack([np.full(d, 3e38, np.float32), np.ones((3, d), np.float32)])
    p = np.full(4, d)
    off = rounds.RoundConfig(d=d, v=2, rule="average", row_bound=rounds.RowBound.parse("off"))
    out = rounds.close_round(vals, p, order, off)
    w = np.full(d, -3.4e38)
    new = rounds.apply_update(w, out)
    assert new is w and out.refused == rounds.REFUSED_NON_FINITE  # refused, w unchanged
    # the former default bound (the default is now median-norm:10, tests/test_row_bound.py)
    clip = rounds.RoundConfig(d=d, v=2, rule="average", row_bound=rounds.RowBound.parse("coord:1e6"))
    out = rounds.close_round(vals, p, order, clip)
    assert out.bounded == 1 and out.update is not None
    np.testing.assert_allclose(out.update, (1e6 + 3) / 4, rtol=1e-6)
    norm = rounds.RoundConfig(d=d, v=2, rule="average", row_bound=rounds.RowBound.parse("norm:2"))
    out = rounds.close_round(vals, p, order, norm)
    assert out.bounded == 4  # the 3e38 row and the ones rows (norm sqrt(8) > 2)
    np.testing.assert_allclose(np.linalg.norm(out.update), 2.0, rtol=1e-5)
    with pytest.raises(ValueError, match="coord:B"):
        rounds.RowBound.parse("clip:3")
    # the default: the 3e38 row is held to 10 times the median row norm (here: the ones rows)
    out = rounds.close_round(vals, p, order, rounds.RoundConfig(d=d, v=2, rule="average"))
    assert out.bounded == 1 and out.update is not None
    np.testing.assert_allclose(out.update, (10 + 3) / 4, rtol=1e-6)


# ----------------------------------------------------------------------------- 3. shards


async def exfiltration(tmp_path: Path, sessions: int) -> None:
    # partition classes:2, 5 shards; mallory asks for shards over and over and holds them
    # while the honest workers join, then leaves before round 0
    async with serving(
        q=5, min_workers=5, num_shards=5, partition="classes:2", tokens_file=str(tokens_file(tmp_path)),
        heartbeat_ms=500, join_rate=1000.0,
    ) as s:  # fmt: skip
        got_rows: dict[int, int] = {}
        held = []
        for i in range(sessions):
            c = s.client(md("mallory"))
            welcome = await c.join(name=f"thief-{i}", wants_shard=True)
            rows = 0
            while True:
                msg = await c.read(10)
                assert msg is not None and msg.HasField("shard")
                rows += msg.shard.rows
                if msg.shard.last:
                    break
            got_rows[welcome.shard_index] = rows
            held.append(c)
        assert len(got_rows) == 1, f"mallory got shards {sorted(got_rows)}"  # one identity, one shard
        assert got_rows == {5 % 5: len(s.core.setup.shards[0])}
        honest = []
        for rank, name in enumerate(HONEST):
            c = s.client(md(name))
            welcome = await c.join(name=name)
            assert welcome.shard_index == rank  # its rank in the tokens file, whoever holds what
            honest.append(c)
        await close_all(held)
        await close_all(honest)


async def test_one_identity_gets_one_shard_and_cannot_steer_others(tmp_path: Path) -> None:
    await exfiltration(tmp_path, scale(20, 20))


async def test_tokens_file_shard_map_pins_shards(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("a tok-aaaaaaaaaaaa shard=2\nb tok-bbbbbbbbbbbb\nc tok-cccccccccccc shard=0\n")
    f.chmod(0o600)
    async with serving(q=3, min_workers=9, num_shards=3, tokens_file=str(f), heartbeat_ms=500) as s:
        got = {}
        for name in "abc":
            c = s.client(credentials.bearer_metadata(f"tok-{name * 12}"))
            got[name] = (await c.join(name=name)).shard_index
            await c.close()
        assert got == {"a": 2, "b": 1, "c": 0}


# ----------------------------------------------------------------------------- 5. authenticated abuse


def padded_heartbeat(pad: int) -> bytes:
    """A Heartbeat with ``pad`` bytes of unknown field 99 (what a padding attacker sends)."""
    inner = hgo_pb2.Heartbeat(unix_ns=1).SerializeToString() + _field(99, b"x" * pad)
    return _field(3, inner)


def _field(number: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


async def code_of(call: Any, timeout: float = 30.0) -> grpc.StatusCode:
    """Read a raw call to its end (a client only sees the status after the messages)."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
        async with asyncio.timeout(timeout):
            while await call.read() is not grpc.aio.EOF:
                pass
    return await asyncio.wait_for(call.code(), timeout)  # type: ignore[no-any-return]


async def raw_session(s: Served, metadata: Any) -> Any:
    return raw_stream(s.channel)(metadata=metadata)


def raw_stream(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream("/hgo.v1.HGO/Session", request_serializer=None, response_deserializer=None)


async def test_padded_oversized_and_bad_late_chunks_are_fatal_and_counted(tmp_path: Path) -> None:
    log_path = tmp_path / "rounds.jsonl"
    async with serving(
        q=6, v=3, tau=200.0, early_close=False, tokens_file=str(tokens_file(tmp_path)), heartbeat_ms=500,
        max_chunk_values=64, log=str(log_path), min_workers=5,
    ) as s:  # fmt: skip
        honest = await honest_workers(s, 0.0)
        join = join_message(name="mallory").SerializeToString()
        # a heartbeat padded with an unknown field: fatal, counted, before anything else
        for pad, code, reason in (
            (100, grpc.StatusCode.INVALID_ARGUMENT, "unknown-fields"),
            (200, grpc.StatusCode.RESOURCE_EXHAUSTED, "oversized-message"),  # 4*64+4096 < 4296+framing
        ):
            pad_len = pad if reason == "unknown-fields" else 4 * 64 + 4096 + pad
            before = s.rejected(reason)
            call = await raw_session(s, md("mallory"))
            await call.write(join)
            await call.write(padded_heartbeat(pad_len))
            assert await code_of(call) == code
            assert s.rejected(reason) == before + 1
        # late chunks: mallory serves round k, then sends for k after it closed
        c = s.client(md("mallory"))
        await c.join(name="mallory")
        task = await c.next_task()
        k = int(task.round)
        await c.wait_closed(k)
        for values, code, reason in (
            (b"\x00" * (4 * 65), grpc.StatusCode.RESOURCE_EXHAUSTED, "oversized"),  # 65 > 64 values
            (b"abc", grpc.StatusCode.INVALID_ARGUMENT, "bad-length"),  # the 3-byte chunk
        ):
            before = s.rejected(reason)
            await c.chunk(k, 0, values)
            assert await c.finish(15) == code
            assert s.rejected(reason) == before + 1
            c = s.client(md("mallory"))
            await wait_for(lambda: "mallory" not in s.core.by_identity, what="mallory's session ended")
            await c.join(name="mallory")
            task = await c.next_task()
            k = int(task.round)
            await c.wait_closed(k)
        # a well-formed late chunk is still just late (not fatal)
        late = s.counter("hgo_late_chunks_total")
        await c.chunk(k, 0, b"\x00" * 8)
        await wait_for(lambda: s.counter("hgo_late_chunks_total") == late + 1, what="late counted")
        assert "mallory" in s.core.by_identity
        await c.close()
        await close_all(honest)
    assert quorum_share(roundlog.read(log_path)[:-1]) >= QUORUM_SHARE  # the last: closed by the stop


async def flood(tmp_path: Path, seconds: float, floods: int) -> None:
    log_path = tmp_path / "rounds.jsonl"
    names = [f"flooder-{i}" for i in range(floods)]
    extra = "".join(f"{n} tok-{n}-0123456789\n" for n in names)
    rate = 200.0
    async with serving(
        q=5 + floods, v=3, tau=60.0, early_close=False, tokens_file=str(tokens_file(tmp_path, extra)),
        heartbeat_ms=500, log=str(log_path), min_workers=5, session_msg_rate=rate,
    ) as s:  # fmt: skip
        honest = await honest_workers(s, 0.0)
        flooders = []
        for n in names:
            c = s.client(md(n))
            await c.join(name=n)
            c.respond()  # serves its rounds too
            flooders.append(c)
        records_of = [s.core.by_identity[n] for n in names]
        beat = hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat(unix_ns=1))
        sent = [0] * floods

        async def pump(i: int, c: WireClient) -> None:
            end = time.monotonic() + seconds
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                while time.monotonic() < end:
                    await c.send(beat)
                    sent[i] += 1

        k0 = s.core.round
        t0 = time.monotonic()
        await asyncio.gather(*(pump(i, c) for i, c in enumerate(flooders)))
        elapsed = time.monotonic() - t0
        k1 = s.core.round
        # (a flooder's own chunks queue behind its heartbeats, so it may be evicted: fine)
        handled = [x.messages for x in records_of]
        # each session was read at no more than its bucket allows (1 s burst + rate * time)
        for h in handled:
            assert h <= rate * (elapsed + 1.0) + 10, (h, elapsed)
        assert s.counter("hgo_rate_limited_total", kind="messages") > 0
        await close_all(flooders)
        await close_all(honest)
    during = [r for r in roundlog.read(log_path) if k0 <= r["round"] < k1]
    assert len(during) >= 5
    assert quorum_share(during) >= QUORUM_SHARE, [r["round"] for r in during if not r["quorum"]]
    print(f"flood: {floods} sessions x {seconds:g} s: sent {sent}, server read {handled}; "
          f"{len(during)} rounds, all with quorum")  # fmt: skip


async def test_message_floods_are_rate_limited_and_rounds_keep_quorum(tmp_path: Path) -> None:
    await flood(tmp_path, 2.0, 2)


@pytest.mark.slow
async def test_message_floods_issue_load(tmp_path: Path) -> None:
    await flood(tmp_path, 25.0, 4)


async def slow_readers(tmp_path: Path, n: int) -> None:
    log_path = tmp_path / "rounds.jsonl"
    names = [f"reader-{i}" for i in range(n)]
    extra = "".join(f"{x} tok-{x}-0123456789\n" for x in names)
    async with serving(
        q=min(5 + n, 20), v=3, tau=200.0, early_close=True, tokens_file=str(tokens_file(tmp_path, extra)),
        heartbeat_ms=300, log=str(log_path), min_workers=5, evict_after=3, join_rate=1000.0,
    ) as s:  # fmt: skip
        honest = await honest_workers(s, 0.0)
        readers = []
        for x in names:  # join, answer heartbeats, never send a value
            c = s.client(md(x))
            await c.join(name=x)
            c.respond(lambda task: np.zeros(0, np.float32))
            readers.append(c)
        await wait_for(lambda: len(s.core.sessions) == 5, timeout=120, what="every silent session evicted")
        # a reader this (loaded) process starved of its heartbeats may go by heartbeat-timeout first
        evicted, timed_out = s.rejected("evicted"), s.rejected("heartbeat-timeout")
        assert evicted + timed_out == n and evicted >= n / 2, (evicted, timed_out)
        assert all(x.identity in HONEST for x in s.core.sessions.values())
        k = s.core.round
        await wait_for(lambda: s.core.round >= k + 5, what="5 more rounds")
        await close_all(readers)
        await close_all(honest)
    records = roundlog.read(log_path)
    tail = [r for r in records if r["round"] >= k][:-1]  # the last: closed by the stop
    assert tail and quorum_share(tail) >= QUORUM_SHARE


async def test_silent_sessions_are_evicted(tmp_path: Path) -> None:
    await slow_readers(tmp_path, 3)


@pytest.mark.slow
async def test_silent_sessions_are_evicted_issue_load(tmp_path: Path) -> None:
    await slow_readers(tmp_path, 100)


# ----------------------------------------------------------------------------- 7. logs


async def log_injection(tmp_path: Path, caplog: pytest.LogCaptureFixture, seconds: float) -> None:
    caplog.set_level(logging.INFO)
    async with serving(q=3, min_workers=50, tokens_file=str(tokens_file(tmp_path)), heartbeat_ms=500) as s:
        c = s.client(md("mallory"))
        await c.join(name="evil\nFORGED INFO hgo.server: join worker=0")
        await c.leave("bye\nFORGED INFO hgo.server: leave worker=7 reason=ok\r\x1b[2J")
        await c.finish(10)
        await wait_for(lambda: not s.core.sessions, what="mallory left")
        calls = 0
        t0 = time.monotonic()
        while calls < 200 or time.monotonic() - t0 < seconds:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await s.status(credentials.bearer_metadata("wrong-token-xxxxxxxx"))
            calls += 1
        elapsed = time.monotonic() - t0
        # every refused call is counted: as a wrong token, or beyond the per-peer guess rate
        assert s.rejected("unauthenticated") + s.rejected("auth-rate") == calls
    lines = [ln for rec in caplog.records for ln in rec.getMessage().split("\n")]
    assert not any(ln.startswith("FORGED") for ln in lines), lines
    assert any("\\nFORGED" in ln for ln in lines)
    assert not any("\x1b" in ln or "\r" in ln for ln in lines)
    refused = [r for r in caplog.records if "rejected /hgo.v1.HGO/Status" in r.getMessage()]
    assert 1 <= len(refused) <= 1 + elapsed / 10 + 1, len(refused)  # one per 10 s; the counter has all
    print(f"log flood: {calls} refused calls in {elapsed:.1f} s, {len(refused)} log lines")


async def test_peer_strings_are_escaped_and_refusals_logged_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await log_injection(tmp_path, caplog, 0.0)


@pytest.mark.slow
async def test_refused_call_flood_issue_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    await log_injection(tmp_path, caplog, 25.0)


# ----------------------------------------------------------------------------- 8. declared vs measured


async def test_round_log_keeps_claims_apart_from_measurements(tmp_path: Path) -> None:
    log_path = tmp_path / "rounds.jsonl"
    async with serving(
        q=2, v=1, tau=60.0, tokens_file=str(tokens_file(tmp_path)), heartbeat_ms=500, log=str(log_path),
        min_workers=2,
    ) as s:  # fmt: skip
        d = s.core.d
        liar = s.client(md("mallory"))
        await liar.join(name="liar", profile="weak", rate=0.001, batch_size=64)  # claims to be slow
        liar.respond()  # and sends full gradients at once
        other = s.client(md("honest-0"))
        await other.join(name="h")
        other.respond()
        k = s.core.round
        await wait_for(lambda: s.core.round >= k + 3, what="3 rounds")
        await liar.close()
        await other.close()
    rows = [w for r in roundlog.read(log_path)[1:-1] for w in r["workers"] if w["identity"] == "mallory"]
    assert rows
    for w in rows:
        assert w["declared"] == {"profile": "weak", "byzantine": False, "rate": 0.001, "batch_size": 64}
        assert w["prefix"] == d and w["bytes"] == 4 * d and w["chunks"] >= 1  # measured


# ----------------------------------------------------------------------------- 4. unauthenticated (a process)


def vm_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert m, text
    return int(m.group(1))


@contextlib.asynccontextmanager
async def server_process(procs: ProcessGroup, tmp_path: Path, *args: str) -> AsyncIterator[tuple[Any, int]]:
    port_file = tmp_path / "port"
    log_path = tmp_path / "rounds.jsonl"
    proc = procs.start(
        [
            *console("hgo-server"), "--port", "0", "--port-file", str(port_file), "--dataset", "digits",
            "--model", "mlp", "--q", "5", "--v", "3", "--tau", "inf",
            "--rounds", "100000", "--eval-every", "0", "--min-workers", "5", "--heartbeat-ms", "500",
            "--tokens-file", str(tokens_file(tmp_path)), "--log", str(log_path), *args,
        ],
        name="server",
    )  # fmt: skip
    end = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, procs.log(proc)
        assert time.monotonic() < end, procs.log(proc)
        await asyncio.sleep(0.1)
    yield proc, int(port_file.read_text())


async def unauthenticated_and_oversized(procs: ProcessGroup, tmp_path: Path, mib: int, idle: int) -> None:
    async with server_process(procs, tmp_path, "--idle-timeout", "2s") as (proc, port):
        assert "open-file limit (RLIMIT_NOFILE)" in procs.log(proc)
        # the attacker has its own connection (a local subchannel pool), as it would on its own host
        opts = [
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.max_receive_message_length", 2**26),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) as ach,
        ):
            stub = hgo_pb2_grpc.HGOStub(ch)
            served = _Stub(stub)
            honest = []
            for name in HONEST:
                c = WireClient(stub, md(name))
                await c.join(name=name)
                c.respond()
                honest.append(c)
            await wait_for(lambda: Path(tmp_path / "rounds.jsonl").exists(), what="training")
            rss0, peak0 = vm_kib(proc.pid, "VmRSS"), vm_kib(proc.pid, "VmHWM")
            # the unauthenticated calls come from a process of their own (bench/bench_adversarial.py
            # --attack): 16 x 100 MiB would starve this process's honest clients, not the server
            attacker = procs.start(
                [sys.executable, str(ROOT / "bench" / "bench_adversarial.py"), "--attack", str(port),
                 "--mib", str(mib), "--calls", "16", "--idle", "0", "--hold", "0"],
                name="attacker",
            )  # fmt: skip
            while attacker.poll() is None:
                await asyncio.sleep(0.1)
            assert attacker.returncode == 0, procs.log(attacker)
            # refused before the body is read (UNAUTHENTICATED at the call's start, issue 20), or by
            # gRPC's size limit when the body's length prefix arrives first
            codes = re.search(r"calls \[(.*)\]", procs.log(attacker))
            assert codes, procs.log(attacker)
            refused_as = set(codes.group(1).replace("'", "").split(", "))
            assert refused_as <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, refused_as
            # authenticated: a padded heartbeat, an oversized first message, a huge late chunk
            for first, then in (
                (join_message(name="m").SerializeToString(), padded_heartbeat(mib * 2**20)),
                (b"\x0a" + b"\xff" * 4 + b"\x00" * (mib * 2**20), None),
            ):
                raw = raw_stream(ach)(metadata=md("mallory"))
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                    await raw.write(first)
                    if then is not None:
                        await raw.write(then)
                assert await code_of(raw) == grpc.StatusCode.RESOURCE_EXHAUSTED
            # idle TCP connections that never speak
            socks = []
            for _ in range(idle):
                sk = socket.create_connection(("127.0.0.1", port))
                socks.append(sk)
            fresh = grpc.aio.insecure_channel(  # a connection of its own: a new fd on the server
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            late = WireClient(hgo_pb2_grpc.HGOStub(fresh), md("mallory"))
            await late.join(name="joins while the idle connections are open")
            late.respond()
            rss1, peak1 = vm_kib(proc.pid, "VmRSS"), vm_kib(proc.pid, "VmHWM")
            # the server closes connections that never handshake within --idle-timeout
            closed = 0
            deadline = time.monotonic() + 20
            for sk in socks:  # the server speaks first (its SETTINGS); then it must hang up
                closed += await asyncio.to_thread(closed_by_peer, sk, deadline)  # the loop keeps serving
                sk.close()
            st = await served.status(md("honest-0"))
            kept = all(not c.call.done() for c in honest)
            await late.close()
            await fresh.close()
            await close_all(honest)
    records = roundlog.read(tmp_path / "rounds.jsonl")[1:-1]
    no_quorum = [r["round"] for r in records if not r["quorum"]]
    round_ms = sorted(r["round_ms"] for r in records)
    p99 = round_ms[int(0.99 * (len(round_ms) - 1))]
    grew_mib = (peak1 - peak0) / 1024
    print(
        f"unauthenticated/oversized ({mib} MiB bodies x 16, {idle} idle connections): server RSS "
        f"{rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB, peak {peak0 / 1024:.0f} -> {peak1 / 1024:.0f} MiB; "
        f"{closed}/{idle} idle connections closed by the server; {len(records)} rounds, "
        f"{len(no_quorum)} without quorum, round_ms p99 {p99:.0f}; honest sessions kept: {kept}"
    )
    # tau = inf: a round waits for every sampled honest worker; the server must not drop
    # anyone, stall, or grow (before issue 10: 138 -> 2183 MB, 8.2 s rounds, sessions dropped)
    assert kept, "an honest worker lost its session"
    assert not no_quorum, no_quorum
    assert p99 < 2000, f"round p99 {p99:.0f} ms"
    # stated bound: the peak grows by less than 128 MiB, half of what the attacker sends at CI
    # size (16 x 16 MiB) and 16 times less than before issue 10 (+2,045 MiB for the 16 calls
    # alone). Measured +17..+52 MiB on a quiet machine and +70 MiB with the whole suite beside
    # two busy loops (load 5-6, 2026-12-05): under load more bodies are in gRPC's buffers at
    # once before their calls are refused, so the former 64 MiB bound failed there. With
    # 100 MiB bodies (1,600 MiB sent, the slow variant) the suite at nice 10 beside two busy
    # experiment processes measured +161 MiB (2026-12-05): what sits in the flow-control
    # windows grows with the bodies, so past 16 MiB bodies the bound is an eighth of what is sent
    # (pre-issue-10 the server grew by more than all of it).
    bound = max(128, 16 * mib // 8)
    assert grew_mib < bound, f"server peak RSS grew {grew_mib:.0f} MiB (bound {bound} MiB)"
    assert closed == idle
    assert st.active_sessions == 6


def closed_by_peer(sk: socket.socket, deadline: float) -> int:
    """1 when the peer closes (EOF or reset) before ``deadline``, else 0."""
    try:
        while True:
            sk.settimeout(max(0.05, deadline - time.monotonic()))
            if sk.recv(4096) == b"":
                return 1
    except (ConnectionResetError, BrokenPipeError):
        return 1
    except OSError:  # timeout
        return 0


class _Stub:
    def __init__(self, stub: hgo_pb2_grpc.HGOStub) -> None:
        self.stub = stub

    async def status(self, metadata: Any) -> hgo_pb2.StatusReply:
        return await self.stub.Status(hgo_pb2.StatusRequest(), metadata=metadata, timeout=10)  # type: ignore[no-any-return]


async def test_unauthenticated_and_oversized_messages_keep_server_memory_bounded(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    await unauthenticated_and_oversized(procs, tmp_path, mib=16, idle=200)


@pytest.mark.slow
async def test_unauthenticated_and_oversized_issue_load(procs: ProcessGroup, tmp_path: Path) -> None:
    await unauthenticated_and_oversized(procs, tmp_path, mib=100, idle=1100)


# ----------------------------------------------------------------------------- the pieces


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--row-bound", "clip:3"], "--row-bound: expected coord:B, norm:B or off"),
        (["--row-bound", "coord:-1"], "--row-bound: row bound must be a finite number"),
        (["--row-bound", "norm:inf"], "--row-bound: row bound must be a finite number"),
        (["--session-msg-rate", "-1"], "--session-msg-rate must be a finite number >= 0"),
        (["--join-rate", "nan"], "--join-rate must be a finite number >= 0"),
        (["--join-timeout", "0"], "--join-timeout must be a finite duration > 0"),
        (["--idle-timeout", "inf"], "--idle-timeout must be a finite duration > 0"),
        (["--evict-after", "-2"], "--evict-after must be >= 0"),
        (["--max-sessions-per-peer", "-1"], "--max-sessions-per-peer must be >= 0"),
        (["--nofile", "10"], "--nofile must be >= 64"),
    ],
)
def test_resilience_flags_are_checked(flags: list[str], needle: str) -> None:
    from hgo_server.config import ConfigError, parse_args

    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_args(flags)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a tok-aaaaaaaaaaaa shard=x\n", "expected shard=N"),
        ("a tok-aaaaaaaaaaaa shard=-1\n", "expected shard=N"),
        ("a tok-aaaaaaaaaaaa 3\n", "expected 'worker-id token [shard=N]'"),
        ("shared tok-aaaaaaaaaaaa\n", "reserved for --token"),
        ("a tok-aaaaaaaaaaaa shard=1\na tok-bbbbbbbbbbbb shard=2\n", "is given shard 1 and shard 2"),
    ],
)
def test_tokens_file_shard_field_errors_name_the_line(tmp_path: Path, text: str, problem: str) -> None:
    from hgo_server import auth

    f = tmp_path / "tokens"
    f.write_text(text)
    f.chmod(0o600)
    with pytest.raises(ValueError, match=re.escape(problem)):
        auth.TokenStore.from_options(None, f)


async def test_a_shard_outside_the_run_is_refused_at_start(tmp_path: Path) -> None:
    from hgo_server.config import ConfigError
    from hgo_server.servicer import start_server
    from tests.wireclient import server_config

    f = tmp_path / "tokens"
    f.write_text("a tok-aaaaaaaaaaaa shard=7\n")
    f.chmod(0o600)
    with pytest.raises(ConfigError, match=r"shard=7, outside \[0, 3\)"):
        await start_server(server_config(q=3, num_shards=3, tokens_file=str(f)))


def test_token_bucket_and_log_hygiene(caplog: pytest.LogCaptureFixture) -> None:
    from hgo_server.logsafe import RateLimitedLog, escape
    from hgo_server.sessions import TokenBucket

    b = TokenBucket(10.0, 5.0, now=0.0)
    assert [b.take(1.0, now=0.0) for _ in range(5)] == [0.0] * 5
    assert b.take(1.0, now=0.0) == pytest.approx(0.1)  # one unit owed at 10/s
    assert b.take(1.0, now=1.0) == 0.0  # refilled (capped at the burst)
    assert not TokenBucket(1.0, 1.0, now=0.0).allow(2.0, now=0.0)
    assert TokenBucket(0.0, 1.0).take(1e9) == 0.0  # rate 0: no limit
    assert escape("a\nb\r\x1bc\u2028\x9b") == "a\\nb\\r\\x1bc\\u2028\\x9b"
    assert escape("x" * 300, 10) == "x" * 10 + "..."
    log = logging.getLogger("hgo.test.limited")
    caplog.set_level(logging.INFO, logger="hgo.test.limited")
    limited = RateLimitedLog(log, interval=3600)
    assert [limited.log(logging.INFO, "k", "m %d", i) for i in range(5)] == [True] + [False] * 4
    assert len([r for r in caplog.records if r.name == "hgo.test.limited"]) == 1


async def test_per_peer_session_cap_and_join_timeout() -> None:
    async with serving(
        q=3, min_workers=50, max_sessions_per_peer=3, join_timeout=300.0, heartbeat_ms=500
    ) as s:
        clients = []
        for i in range(3):
            c = s.client()
            await c.join(name=f"p{i}")
            clients.append(c)
        extra = s.client()
        await extra.send(join_message(name="one too many"))
        assert await extra.finish(10) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert s.rejected("peer-cap") == 1 and len(s.core.sessions) == 3
        await clients[0].close()
        await wait_for(lambda: len(s.core.sessions) == 2, what="a slot freed")
        again = s.client()
        await again.join(name="fits again")
        # a stream that never sends its Join is ended after --join-timeout
        mute = s.client()
        assert await mute.finish(10) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert s.rejected("join-timeout") == 1
        for c in [*clients[1:], again]:
            await c.close()


# ----------------------------------------------------------------------------- 1 + 3 with real workers


async def accuracy_run(
    procs: ProcessGroup, tmp_path: Path, *, partition: str, sybils: int = 0, thief: bool = False
) -> float:
    """Test accuracy after 60 rounds of 5 real hgo-worker processes (digits MLP, median f=2),
    with mallory as a Sybil (``sybils`` Join attempts, the active session sending -100) or
    as a shard thief that holds shards and leaves before round 0."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    async with serving(
        q=10, rule="median", f=2, tau=200.0, rounds=60, eval_every=0, dataset="digits", model="mlp",
        partition=partition, num_shards=5, min_workers=5, heartbeat_ms=500, seed=3,
        tokens_file=str(tokens_file(tmp_path)),
    ) as s:  # fmt: skip
        held = []
        if thief:
            for i in range(4):
                c = s.client(md("mallory"))
                await c.join(name=f"thief-{i}", wants_shard=True)
                held.append(c)
        attackers: list[WireClient] = []
        if sybils:
            for i in range(sybils):  # as fast as she can; the join rate refuses most
                c = s.client(md("mallory"))
                with contextlib.suppress(AssertionError, grpc.aio.AioRpcError, asyncio.TimeoutError):
                    await c.join(name=f"sybil-{i}", timeout=5)
                    c.respond(lambda task, d=s.core.d: np.full(d, -100.0, dtype=np.float32))
                    attackers.append(c)
                    continue
                await c.close()
        workers = []
        for i, name in enumerate(HONEST):
            argv = [
                *console("hgo-worker"), "--server", f"127.0.0.1:{s.port}", "--rate", "0", "--seed", str(i),
                "--token", f"tok-{name}-0123456789", "--name", name, "--reconnect-timeout", "20",
            ]  # fmt: skip
            workers.append(procs.start(argv, name=f"{tmp_path.name}-{name}"))
        await wait_for(lambda: s.core.state == "training", timeout=120, what="5 honest workers")
        for c in held:  # the thief leaves before round 0... or as soon as training started
            await c.close()
        summary = await asyncio.wait_for(asyncio.shield(s.run), 180)
        if sybils:
            refused = s.rejected("join-rate")
            print(f"sybil: {len(attackers)} of {sybils} joins admitted, {refused:.0f} refused")
        for c in attackers:
            await c.close()
        # poll, never block: the Stop messages are written by this event loop
        await wait_for(lambda: all(w.poll() is not None for w in workers), timeout=60, what="workers exit")
        assert [w.returncode for w in workers] == [0] * len(workers), [procs.log(w)[-2000:] for w in workers]
    return float(summary.metric)


@pytest.mark.slow
async def test_sybil_and_shard_thief_do_not_move_accuracy_with_real_workers(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    honest = await accuracy_run(procs, tmp_path / "honest", partition="iid")
    sybil = await accuracy_run(procs, tmp_path / "sybil", partition="iid", sybils=1000)
    honest2 = await accuracy_run(procs, tmp_path / "honest-classes", partition="classes:2")
    thief = await accuracy_run(procs, tmp_path / "thief", partition="classes:2", thief=True)
    print(
        f"accuracy after 60 rounds: honest only {honest:.3f}, with 1000 Sybil joins sending -100 "
        f"{sybil:.3f}; classes:2 honest only {honest2:.3f}, with a shard thief {thief:.3f}"
    )
    # before issue 10: 71% -> 8-9.5% (Sybil) and 66.6% -> 20.1% (thief)
    assert sybil >= honest - 0.1 and sybil > 0.5
    assert thief >= honest2 - 0.1
