"""A network partition of one worker, made real with a network namespace and a veth pair.

Topology (all created by this test, all deleted afterwards, even on failure)::

    root namespace                          namespace hgo-part-XXXX
    hgo-server bound on 10.231.N.1  <-veth->  10.231.N.2  hgo-worker "wp"
    hgo-worker "w0", "w1" (connect to 10.231.N.1 through the local route)

Cutting the root side of the veth (``ip link set ... down``) silences "wp" without a TCP
reset, as a real partition would: the server must drop it after 3 missed heartbeats and
keep training with the others; when the link comes back, "wp" must reconnect by itself
(a fresh session) and be sampled again. Traffic only flows inside the namespace and veth
pair created here. Needs root and ``ip netns``; skipped otherwise with the reason.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from hgo_common import roundlog
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from tests.procs import ProcessGroup, console, free_port, until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


@dataclass
class Partition:
    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    res = _ip("netns", "list", check=False)
    if res.returncode != 0:
        return f"'ip netns' is unavailable: {res.stderr.strip()}"
    return None


@pytest.fixture
def partition() -> Iterator[Partition]:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000:04d}{random.randrange(100):02d}"
    used = _ip("-o", "addr").stdout
    subnet = next(
        (n for n in random.sample(range(64), 64) if f"10.231.{n}." not in used), None
    )  # a /30 nobody here uses
    if subnet is None:
        pytest.skip("no free 10.231.N.0/30 subnet")
    p = Partition(f"hgo-part-{tag}", f"hgoh{tag}", f"hgow{tag}", f"10.231.{subnet}.1", f"10.231.{subnet}.2")
    try:
        res = _ip("netns", "add", p.ns, check=False)
        if res.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
        _ip("link", "add", p.host_if, "type", "veth", "peer", "name", p.ns_if)
        _ip("link", "set", p.ns_if, "netns", p.ns)
        _ip("addr", "add", f"{p.host_ip}/30", "dev", p.host_if)
        _ip("link", "set", p.host_if, "up")
        _ip("netns", "exec", p.ns, "ip", "addr", "add", f"{p.ns_ip}/30", "dev", p.ns_if)
        _ip("netns", "exec", p.ns, "ip", "link", "set", p.ns_if, "up")
        _ip("netns", "exec", p.ns, "ip", "link", "set", "lo", "up")
        yield p
    finally:
        # processes we started inside the namespace (normally already gone with `procs`)
        pids = _ip("netns", "pids", p.ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        _ip("netns", "del", p.ns, check=False)  # takes the veth pair with it
        if _ip("link", "show", p.host_if, check=False).returncode == 0:
            _ip("link", "del", p.host_if, check=False)
        assert p.ns not in _ip("netns", "list", check=False).stdout, "namespace left behind"


def _status(addr: str) -> hgo_pb2.StatusReply | None:
    try:
        with grpc.insecure_channel(addr) as ch:
            return hgo_pb2_grpc.HGOStub(ch).Status(hgo_pb2.StatusRequest(), timeout=5)  # type: ignore[no-any-return]
    except grpc.RpcError:
        return None


def _until(pred: Callable[[], object], timeout: float, what: str, procs: ProcessGroup) -> None:
    until(pred, timeout, what, procs, interval=0.2)


def _worker_ids(log: str, name: str) -> list[int]:
    return [int(m) for m in re.findall(rf"join worker=(\d+) name='{name}'", log)]


def test_partitioned_worker_is_dropped_then_rejoins(
    partition: Partition, procs: ProcessGroup, tmp_path: Path
) -> None:
    p = partition
    port = free_port()
    addr = f"{p.host_ip}:{port}"
    rlog = tmp_path / "rounds.jsonl"
    server = procs.start(
        [
            *console("hgo-server"), "--bind", p.host_ip, "--port", str(port), "--dataset", "breast-cancer",
            # tau 1 s, rounds closing early once every sampled worker delivered d = 31: a
            # round loses its quorum only if both live workers stall for a second (a loaded
            # machine made 100 ms rounds without quorum), and a partitioned wp lasts 1 s
            "--q", "3", "--v", "1", "--tau", "1s", "--heartbeat-ms", "500",
            "--rounds", "100000", "--min-workers", "3", "--eval-every", "0", "--log", str(rlog),
        ],
        name="server",
    )  # fmt: skip
    worker = [*console("hgo-worker"), "--server", addr, "--profile", "powerful", "--reconnect-timeout", "120"]
    for name in ("w0", "w1"):
        procs.start([*worker, "--name", name], name=name)
    procs.start([*worker, "--name", "wp"], name="wp", prefix=p.prefix())

    def rounds() -> list[dict[str, object]]:
        return roundlog.read(rlog) if rlog.exists() else []

    def active() -> int:
        st = _status(addr)
        return -1 if st is None else int(st.active_sessions)

    _until(lambda: len(rounds()) >= 5, 90, "5 rounds with 3 workers", procs)
    (wp_id,) = _worker_ids(procs.log(server), "wp")
    assert any(w["id"] == wp_id for w in rounds()[-1]["workers"])  # type: ignore[attr-defined]

    p.cut()
    t_cut = time.monotonic()
    _until(lambda: active() == 2, 30, "the server to drop the partitioned worker", procs)
    dropped_after = time.monotonic() - t_cut
    n = len(rounds())
    _until(lambda: len(rounds()) >= n + 10, 60, "10 rounds during the partition", procs)
    during = rounds()[n:]
    assert all(r["quorum"] for r in during)
    assert all(wp_id not in [w["id"] for w in r["workers"]] for r in during[1:])  # type: ignore[attr-defined]
    assert "heartbeat-timeout" in procs.log(server)

    p.heal()
    t_heal = time.monotonic()
    _until(
        lambda: len(_worker_ids(procs.log(server), "wp")) == 2 and active() == 3, 90, "wp to rejoin", procs
    )
    rejoined_after = time.monotonic() - t_heal
    new_id = _worker_ids(procs.log(server), "wp")[-1]
    assert new_id != wp_id  # a fresh session
    n = len(rounds())
    _until(lambda: len(rounds()) >= n + 3, 60, "rounds after the partition", procs)
    assert any(w["id"] == new_id and w["prefix"] > 0 for w in rounds()[-1]["workers"])  # type: ignore[attr-defined]
    assert server.poll() is None
    print(
        f"\n[partition] dropped after {dropped_after:.1f}s, "
        f"rejoined {rejoined_after:.1f}s after the link came back"
    )
