"""Churn and crashes: workers that come and go, die, and a server that dies and resumes.

In-process (a real server on a real port, raw protocol clients from tests.wireclient):
1,000 join/leave cycles leak no session and no memory; a round without quorum makes no
update and is counted; a returning worker is a fresh session.

Real processes (hgo-server and hgo-worker console scripts): workers SIGKILLed mid-round
while training goes on; the server SIGKILLed and restarted with ``--resume`` continues
from its last checkpoint with the identical model and round counter while the workers
reconnect by themselves; SIGTERM checkpoints, tells the workers and exits 0; a corrupt
checkpoint or one for another model is refused with a clear error, exit non-zero, and the
file left untouched.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import subprocess
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from hgo_common import roundlog, wire
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_server import checkpoint
from tests.procs import ProcessGroup, console, free_port, until
from tests.wireclient import WireClient, serving, wait_for

pytestmark = pytest.mark.timeout(300)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- in-process


async def _cycle(s: object, rng: random.Random) -> None:
    """One short-lived session: join, maybe a heartbeat or a chunk, then leave or vanish."""
    c = s.client()  # type: ignore[attr-defined]
    try:
        await c.join(timeout=30, name="churn")
        action = rng.random()
        if action < 0.2:
            await c.send(hgo_pb2.WorkerMessage(heartbeat=hgo_pb2.Heartbeat()))
        if action < 0.5:
            await c.leave("bye")  # polite: Leave + half-close
            await c.finish(timeout=10)
        else:
            await c.close()  # abrupt: the connection's stream is cancelled
    finally:
        await c.close()


CYCLES = int(os.environ.get("HGO_CHURN_CYCLES", "1000"))


def _names(s: object) -> list[str]:
    """The names of the server's sessions (sorted): what is left, when a wait times out."""
    return sorted(str(x.name) for x in list(s.core.sessions.values()))  # type: ignore[attr-defined]


async def test_join_leave_cycles_leak_no_sessions_and_no_memory(capsys: pytest.CaptureFixture[str]) -> None:
    # Training runs meanwhile (2 honest workers, q = 3), so churned sessions are sampled
    # into rounds and leave in the middle of them too.
    # Heartbeats every 5 s: the honest sessions must not be dropped as silent when a loaded
    # machine delays their replies (a drop left fewer than the baseline: a 30 s timeout that
    # looked like a leak). Churned sessions leave by their stream's end, not by the sweep.
    async with serving(q=3, v=1, tau=20.0, early_close=False, heartbeat_ms=5000) as s:
        honest = []
        for _ in range(2):
            c = s.client()
            await c.join(name="honest")
            c.respond(record=False)  # no per-round history: only real leaks should show
            honest.append(c)
        baseline = (await s.status()).active_sessions
        assert baseline == 2
        rng = random.Random(7)

        async def batch(n: int) -> None:
            await asyncio.gather(*(_cycle(s, rng) for _ in range(n)))

        for _ in range(5):  # warm-up: caches, channel, first-use allocations
            await batch(20)
        await wait_for(lambda: _names(s) == ["honest", "honest"], timeout=60, what="warm-up sessions gone")
        gc.collect()
        rss0 = _rss_bytes()
        tracemalloc.start()
        traced0, _ = tracemalloc.get_traced_memory()
        round0 = s.core.round
        t0 = time.monotonic()
        done = 0
        while done < CYCLES:
            n = min(25, CYCLES - done)
            await batch(n)
            done += n
        await wait_for(
            lambda: _names(s) == ["honest", "honest"], timeout=60, what="churned sessions gone",
            detail=lambda: f"sessions left {_names(s)[:10]} ({len(_names(s))})",
        )  # fmt: skip
        elapsed = time.monotonic() - t0
        gc.collect()
        traced1, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss1 = _rss_bytes()
        st = await s.status()
        assert st.active_sessions == baseline
        assert st.state == "training" and s.core.round > round0  # training went on throughout
        # Python allocations still alive after 1,000 sessions (server + clients in this
        # process): a leak of even 1 KiB per session would show as ~1 MB.
        traced_kib = (traced1 - traced0) / 1024
        rss_mib = (rss1 - rss0) / 2**20
        with capsys.disabled():
            print(
                f"\n[churn] {CYCLES} join/leave cycles in {elapsed:.1f}s; rounds {round0}->{s.core.round}; "
                f"tracemalloc +{traced_kib:.0f} KiB; RSS {rss0 / 2**20:.1f}->{rss1 / 2**20:.1f} MiB "
                f"({rss_mib:+.1f} MiB)"
            )
        assert traced_kib < 1024 * max(1, CYCLES / 1000), f"{traced_kib:.0f} KiB still allocated"
        assert rss_mib < 40, f"RSS grew by {rss_mib:.1f} MiB"
        for c in honest:
            await c.close()


async def test_returning_worker_is_a_fresh_session() -> None:
    async with serving(q=2, v=1, tau=30.0, early_close=False, heartbeat_ms=500) as s:
        a = s.client()
        await a.join(name="a")
        a.respond()
        b = s.client()
        welcome_b = await b.join(name="b")
        old_id, old_worker = b.session_id, welcome_b.worker_id
        task = await b.next_task()
        await b.close()  # dropped mid-round (its connection is gone)
        await wait_for(lambda: len(s.core.sessions) == 1, what="b dropped")
        # the round b was sampled into still closes and training continues without it
        await wait_for(lambda: s.core.round > task.round + 2, what="rounds after the drop")
        back = s.client()
        welcome = await back.join(name="b")
        assert back.session_id != old_id and len(back.session_id) == 32
        assert welcome.worker_id != old_worker
        # the old session id is dead: using it on the new stream is refused
        nxt = await back.next_task()
        await back.chunk(nxt.round, 0, np.zeros(4, np.float32).tobytes(), session_id=old_id)
        assert await back.finish() == grpc.StatusCode.PERMISSION_DENIED
        await a.close()


async def test_round_without_quorum_makes_no_update_and_is_counted(tmp_path: Path) -> None:
    log_path = tmp_path / "rounds.jsonl"
    # v = 2 of q = 2: a silent sampled worker denies the quorum. tau 200 ms: the honest
    # client must deliver its whole gradient in every round, also on a loaded machine.
    async with serving(q=2, v=2, tau=200.0, early_close=False, heartbeat_ms=500, log=str(log_path)) as s:
        d = s.core.d
        ones = np.ones(d, dtype=np.float32)
        honest = s.client()
        await honest.join(name="honest")
        honest.respond(lambda t: ones)
        silent = s.client()
        await silent.join(name="silent")
        silent.respond(lambda t: ones[:0])  # answers heartbeats, sends no gradient
        await wait_for(lambda: s.core.rounds_without_quorum >= 5, what="rounds without quorum")
        w_stuck = s.core.weights.tobytes()
        r_stuck = s.core.round
        await wait_for(lambda: s.core.round >= r_stuck + 3, what="more rounds")
        assert s.core.weights.tobytes() == w_stuck  # no quorum, no update
        st = await s.status()
        assert st.rounds_without_quorum >= 5
        assert s.counter("hgo_rounds_without_quorum_total") == st.rounds_without_quorum
        # replace the silent worker by an honest one: the quorum is back and w moves
        silent_phase_end = s.core.round  # rounds before this one ran with exactly {honest, silent}
        await silent.close()
        helper = s.client()
        await helper.join(name="helper")
        helper.respond(lambda t: ones)
        await wait_for(lambda: s.core.weights.tobytes() != w_stuck, timeout=60, what="an update with quorum")
        for c in (honest, helper):
            await c.close()
    records = roundlog.read(log_path)
    no_q = [r for r in records if not r["quorum"]]
    assert len(no_q) >= 5
    assert all(r["block"] == 0 and r["step_size"] == 0 for r in no_q)
    # Only the rounds run with exactly {honest, silent} have a known shape; the round the
    # shutdown interrupts (everyone already gone) may legitimately hold prefixes [0, 0], and
    # a round may start before the silent worker joined (only honest sampled, on a loaded
    # machine): it lacks the quorum too, but is not one of these.
    stuck = [r for r in no_q if r["round"] < silent_phase_end and len(r["workers"]) == 2]
    assert len(stuck) >= 5
    shapes = [sorted(w["prefix"] for w in r["workers"]) for r in stuck]
    assert all(p == [0, d] for p in shapes), shapes
    assert any(r["quorum"] for r in records[-3:])


# ----------------------------------------------------------------------------- processes


def _status(port: int) -> hgo_pb2.StatusReply | None:
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            return hgo_pb2_grpc.HGOStub(ch).Status(hgo_pb2.StatusRequest(), timeout=5)  # type: ignore[no-any-return]
    except grpc.RpcError:
        return None


def _until(pred: Callable[[], object], timeout: float, what: str, procs: ProcessGroup | None = None) -> None:
    until(pred, timeout, what, procs)


# tau 1 s, rounds closing as soon as every sampled worker delivered d = 31: a worker misses
# a round only if it stalls for a second (100 ms rounds lost responders on a loaded machine)
SERVER_ARGS = [
    "--bind", "127.0.0.1", "--dataset", "breast-cancer", "--q", "4", "--v", "2", "--tau", "1s",
    "--eval-every", "0", "--min-workers", "3", "--heartbeat-ms", "500",
]  # fmt: skip


def _server(
    procs: ProcessGroup, port: int, tmp: Path, *extra: str, name: str = "server"
) -> subprocess.Popen[bytes]:
    argv = [
        *console("hgo-server"),
        "--port",
        str(port),
        *SERVER_ARGS,
        "--log",
        str(tmp / f"{name}.jsonl"),
        *extra,
    ]
    return procs.start(argv, name=name)


def _worker(procs: ProcessGroup, port: int, name: str, *extra: str) -> subprocess.Popen[bytes]:
    argv = [
        *console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--profile", "powerful",
        "--name", name, "--reconnect-timeout", "60", "--seed", str(abs(hash(name)) % 1000), *extra,
    ]  # fmt: skip
    return procs.start(argv, name=name)


def _rounds(path: Path) -> list[dict[str, object]]:
    return roundlog.read(path) if path.exists() else []


@pytest.mark.slow
def test_workers_sigkilled_mid_round_training_continues(procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    server = _server(procs, port, tmp_path, "--rounds", "100000")
    workers = {f"w{i}": _worker(procs, port, f"w{i}") for i in range(4)}
    log = tmp_path / "server.jsonl"
    _until(lambda: (_status(port) or hgo_pb2.StatusReply()).active_sessions == 4, 90, "4 sessions", procs)
    n = len(_rounds(log))
    _until(lambda: len(_rounds(log)) >= n + 5, 90, "5 rounds with 4 workers", procs)
    assert _rounds(log)[-1]["sampled"] == 4
    # kill two workers without warning, mid-round (rounds run back to back)
    for name in ("w0", "w1"):
        os.killpg(workers[name].pid, signal.SIGKILL)
        workers[name].wait(5)
    _until(
        lambda: (_status(port) or hgo_pb2.StatusReply()).active_sessions == 2, 30, "2 sessions left", procs
    )
    n = len(_rounds(log))
    _until(lambda: len(_rounds(log)) >= n + 10, 60, "10 more rounds with 2 workers", procs)
    after = _rounds(log)[n:]
    assert all(r["quorum"] and r["sampled"] == 2 and r["responded"] == 2 for r in after[1:])
    # they come back (new processes): fresh sessions, sampled again
    for name in ("w0", "w1"):
        workers[name] = _worker(procs, port, name + "-again")
    _until(
        lambda: (_status(port) or hgo_pb2.StatusReply()).active_sessions == 4, 60, "4 sessions again", procs
    )
    n = len(_rounds(log))
    _until(lambda: len(_rounds(log)) >= n + 5, 60, "rounds with 4 workers", procs)
    last = _rounds(log)[-1]
    ids = {w["id"] for w in last["workers"]}  # type: ignore[attr-defined]
    assert last["sampled"] == 4 and max(ids) >= 4, ids  # worker ids 4, 5 are the returning ones
    assert server.poll() is None
    text = procs.log(server)
    assert text.count("join worker=") == 6


@pytest.mark.slow
def test_server_sigkill_resume_identical_model_and_workers_reconnect(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    port = free_port()
    ck = tmp_path / "ck"
    common = ["--checkpoint-dir", str(ck), "--checkpoint-every", "5", "--rounds", "60"]
    server = _server(procs, port, tmp_path, *common)
    workers = [_worker(procs, port, f"w{i}") for i in range(3)]
    _until(lambda: len(checkpoint.list_checkpoints(ck)) >= 2, 90, "two checkpoints", procs)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(5)
    state = checkpoint.load_latest(ck, model="logistic", dim=31)
    assert state is not None and state.round >= 10 and state.round % 5 == 0
    newest = checkpoint.list_checkpoints(ck)[-1]
    assert newest.read_bytes().endswith(state.weights.tobytes())  # the file's own weights
    killed_at = max(int(r["round"]) for r in _rounds(tmp_path / "server.jsonl"))  # type: ignore[call-overload]
    assert killed_at >= state.round - 1

    # Restart with --resume on the same address; a probe joins first (min-workers 4), so
    # the very first task of the resumed server is observed on the wire.
    resumed = _server(procs, port, tmp_path, *common, "--resume", "--min-workers", "4", name="resumed")

    async def probe() -> hgo_pb2.RoundTask:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = hgo_pb2_grpc.HGOStub(ch)
            end = time.monotonic() + 60
            while True:
                try:
                    c = WireClient(stub)
                    await c.join(name="probe")
                    break
                except (grpc.aio.AioRpcError, AssertionError):
                    if time.monotonic() > end:
                        raise
                    await asyncio.sleep(0.2)
            task = await c.next_task(timeout=90)
            c.respond()
            await wait_for(lambda: c.stop_reason is not None, timeout=120, what="Stop(done)")
            assert c.stop_reason == "done"
            await c.close()
            return task

    first = asyncio.run(probe())
    assert first.round == state.round
    assert first.weights == wire.encode(state.weights)  # w_k exactly as checkpointed
    # the workers reconnected by themselves and training finished: everyone exits 0
    assert procs.wait(resumed, 120) == 0
    for w in workers:
        assert procs.wait(w, 60) == 0, procs.log(w)[-2000:]
    rlog = _rounds(tmp_path / "resumed.jsonl")
    assert [r["round"] for r in rlog] == list(range(state.round, 60))
    assert "resumed from round" in procs.log(resumed)
    assert any("session ended" in procs.log(w) for w in workers)  # they saw the crash and came back


@pytest.mark.slow
def test_sigterm_checkpoints_stops_workers_and_exits_zero(procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    ck = tmp_path / "ck"
    common = ["--checkpoint-dir", str(ck), "--checkpoint-every", "1000", "--rounds", "100000"]
    server = _server(procs, port, tmp_path, *common)
    workers = [_worker(procs, port, f"w{i}") for i in range(3)]
    _until(lambda: len(_rounds(tmp_path / "server.jsonl")) >= 8, 90, "8 rounds", procs)
    server.send_signal(signal.SIGTERM)
    assert procs.wait(server, 30) == 0
    last_round = max(int(r["round"]) for r in _rounds(tmp_path / "server.jsonl"))  # type: ignore[call-overload]
    state = checkpoint.load_latest(ck, model="logistic", dim=31)
    assert state is not None and state.round == last_round + 1  # the round after the last one closed
    out = procs.log(server)
    assert "checkpoint round=" in out and "stopped" in out

    # workers were told (Stop "shutdown") and are trying to reconnect, not dead
    def told(w: subprocess.Popen[bytes]) -> bool:
        return "stopped the session" in procs.log(w) or "session ended" in procs.log(w)

    _until(lambda: all(told(w) for w in workers), 60, "the workers to log the end of their session", procs)
    assert all(w.poll() is None for w in workers)
    # and a resumed server finishes the job with them
    resumed = _server(
        procs, port, tmp_path, *common[:-2], "--rounds", str(state.round + 10), "--resume", name="resumed"
    )
    assert procs.wait(resumed, 120) == 0
    for w in workers:
        assert procs.wait(w, 60) == 0
    assert [r["round"] for r in _rounds(tmp_path / "resumed.jsonl")] == list(
        range(state.round, state.round + 10)
    )


def _corrupt(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize(
    ("how", "extra", "needle"),
    [
        ("corrupt", [], "weights checksum mismatch"),
        ("other-model", ["--model", "svm"], "written for model 'logistic'"),
        ("other-dim", ["--model", "mlp"], "written for model 'logistic'"),
        ("garbage", [], "bad magic"),
    ],
)
def test_bad_checkpoint_is_refused_clearly(
    procs: ProcessGroup, tmp_path: Path, how: str, extra: list[str], needle: str
) -> None:
    ck = tmp_path / "ck"
    rng = np.random.default_rng(0)
    state = checkpoint.State(round=7, weights=rng.standard_normal(31), model="logistic", dim=31, config={})
    path = checkpoint.save(ck, state)
    if how == "corrupt":
        _corrupt(path)
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    before = path.read_bytes()
    server = _server(procs, 0, tmp_path, "--checkpoint-dir", str(ck), "--resume", "--rounds", "5", *extra)
    code = procs.wait(server, 60)
    out = procs.log(server)
    assert code != 0, out
    assert str(path) in out and needle in out, out
    assert "Traceback" not in out  # a clear one-line error, not a crash
    assert path.read_bytes() == before
    assert checkpoint.list_checkpoints(ck) == [path]


@pytest.mark.slow
def test_load_100_sessions_keep_the_deadline(tmp_path: Path) -> None:
    """Reduced bench/bench_sessions.py: 100 sessions in 2 client processes, q = 20, tau = 300 ms."""
    from bench.bench_sessions import run

    res = run(
        sessions=100, procs=2, q=20, tau_ms=300.0, rounds=10, dataset="digits", model="mlp",
        data_dir=None, workdir=tmp_path, timeout_s=240,
    )  # fmt: skip
    assert res["rounds"] == 10 and res["quorum_rounds"] == 10
    assert res["sampled_min"] == 20 and res["responded_min"] == 20
    # every round lasted at least its deadline (no early close) and none hung
    assert res["close_ms_p50"] >= 300.0 - 1.0
    assert res["round_ms_max"] < 300.0 + 5000.0
    assert 0 < res["server_kib_per_session"] < 2048
