"""Operating the server: signals, the tokens file, certificates, metrics and start-up checks.

Issue 20 (Deliver 6) and issue 24 (items 7-9), against real ``hgo-server`` processes or a
real in-process server on port 0. Each test failed on main 968fbdd (named in its docstring).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from hgo_common.net import credentials
from hgo_common.net.proto import hgo_pb2_grpc
from tests.procs import ProcessGroup, console
from tests.wireclient import WireClient, join_message, serving, wait_for

pytestmark = pytest.mark.timeout(300)

TOKENS = {name: f"tok-{name}-0123456789abcdef" for name in ("alice", "bob", "carol")}


def _tokens(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n} {TOKENS[n]}\n" for n in names))
    path.chmod(0o600)
    return path


def _server(procs: ProcessGroup, tmp_path: Path, *args: str, prefix: tuple[str, ...] = ()) -> tuple[Any, int]:
    port_file = tmp_path / "port"
    proc = procs.start(
        [*console("hgo-server"), "--port", "0", "--port-file", str(port_file), "--dataset", "breast-cancer",
         "--q", "2", "--rounds", "100000", "--eval-every", "0", "--min-workers", "3", *args],
        name="server", prefix=prefix,
    )  # fmt: skip
    end = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, procs.log(proc)
        assert time.monotonic() < end, procs.log(proc)
        time.sleep(0.1)
    return proc, int(port_file.read_text())


async def test_sighup_reloads_the_tokens_file_and_revokes_removed_identities(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    """main: SIGHUP killed the server (no checkpoint, no Stop) and a token could only be
    revoked by a restart. Now: bob's session ends PERMISSION_DENIED, carol (added) can join,
    alice's session goes on, and the server keeps serving."""
    tokens = _tokens(tmp_path / "tokens", ["alice", "bob"])
    proc, port = _server(procs, tmp_path, "--tokens-file", str(tokens))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = hgo_pb2_grpc.HGOStub(ch)
        alice = WireClient(stub, credentials.bearer_metadata(TOKENS["alice"]))
        bob = WireClient(stub, credentials.bearer_metadata(TOKENS["bob"]))
        await alice.join(name="alice")
        await bob.join(name="bob")
        _tokens(tokens, ["alice", "carol"])
        proc.send_signal(signal.SIGHUP)
        assert await bob.finish(20) == grpc.StatusCode.PERMISSION_DENIED
        assert "removed from the tokens file" in (await bob.call.details() or "")
        procs.wait_log(proc, "SIGHUP: tokens file", 20)
        carol = WireClient(stub, credentials.bearer_metadata(TOKENS["carol"]))
        await carol.join(name="carol")
        again = WireClient(stub, credentials.bearer_metadata(TOKENS["bob"]))
        assert await again.finish(20) == grpc.StatusCode.UNAUTHENTICATED
        assert proc.poll() is None and alice.call.done() is False
        # a broken file is refused and the tokens in force stay
        tokens.write_text("dave short\n")
        proc.send_signal(signal.SIGHUP)
        procs.wait_log(proc, "the previous tokens stay in force", 20)
        assert proc.poll() is None
        for c in (alice, carol):
            await c.close()
    proc.send_signal(signal.SIGTERM)
    assert procs.wait(proc, 60) == 0, procs.log(proc)


def test_low_open_file_limit_is_warned_about_with_its_number(procs: ProcessGroup, tmp_path: Path) -> None:
    """main logged the limit at INFO only; 1,100 idle connections then locked honest workers out."""
    proc, _port = _server(procs, tmp_path, prefix=("prlimit", "--nofile=1000:1000"))
    procs.wait_log(proc, "the open-file limit is 1000", 30)
    proc.send_signal(signal.SIGTERM)
    assert procs.wait(proc, 60) == 0, procs.log(proc)


def test_sigterm_before_training_reports_no_result(procs: ProcessGroup, tmp_path: Path) -> None:
    """main printed the untrained model's accuracy as if it were a result (issue 24, item 8)."""
    proc, _port = _server(procs, tmp_path, "--export", str(tmp_path / "model.npz"))
    procs.wait_log(proc, "waiting for", 30)
    proc.send_signal(signal.SIGTERM)
    procs.wait(proc, 60)
    out = procs.log(proc)
    assert "stopped: rounds=0 (no round trained)" in out, out
    assert "accuracy=" not in out and not (tmp_path / "model.npz").exists()


@pytest.mark.parametrize("flag", ["--log", "--export"])
def test_an_uncreatable_log_or_export_exits_2_naming_the_path(
    procs: ProcessGroup, tmp_path: Path, flag: str
) -> None:
    """main: a traceback (--log), or training to the end and then a traceback (--export)."""
    bad = "/proc/nonexistent/x.jsonl"
    proc = procs.start([*console("hgo-server"), "--port", "0", "--dataset", "breast-cancer", flag, bad],
                       name="server")  # fmt: skip
    assert procs.wait(proc, 60) == 2
    out = procs.log(proc)
    assert f"hgo-server: error: {flag} '{bad}'" in out and "Traceback" not in out, out


async def test_more_declared_byzantine_sessions_than_f_are_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """main: 2 declared-Byzantine workers with --f 1 joined without a word (issue 24, item 9)."""
    caplog.set_level(logging.WARNING, logger="hgo.server")
    async with serving(q=5, min_workers=50, rule="median", f=1) as s:
        stub = hgo_pb2_grpc.HGOStub(s.channel)
        clients = [WireClient(stub) for _ in range(3)]

        async def join(c: WireClient, name: str, byzantine: bool) -> None:
            msg = join_message(name=name)
            msg.join.byzantine = byzantine
            await c.send(msg)
            assert (await c.read()) is not None  # the Welcome

        def warned() -> bool:
            text = "2 active sessions declare themselves Byzantine but --f is 1"
            return any(text in r.getMessage() for r in caplog.records)

        await join(clients[0], "b0", True)
        await join(clients[1], "h", False)
        await wait_for(lambda: len(s.core.sessions) == 2, what="two sessions")
        assert not warned()
        await join(clients[2], "b1", True)
        await wait_for(warned, what="the warning")
        for c in clients:
            await c.close()


def _threads() -> int:
    return sum(1 for t in threading.enumerate() if t.is_alive())


def test_worker_metrics_are_local_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """main: /metrics on 0.0.0.0 and one thread per connection (299 threads for 289 idle
    connections). Now 127.0.0.1 by default, at most MAX_CONNECTIONS served at once, idle
    ones dropped after the timeout, and a scrape works again afterwards."""
    from hgo_common import metrics_http
    from hgo_worker.cli import build_parser
    from hgo_worker.metrics import WorkerMetrics

    assert build_parser().parse_args(["--server", "x:1"]).metrics_bind == "127.0.0.1"
    monkeypatch.setattr(metrics_http._Handler, "timeout", 2.0)
    m = WorkerMetrics("average", enabled=True)
    port = m.serve(0)
    url = f"http://127.0.0.1:{port}/metrics"
    assert b"hgo_worker_rounds_total" in urllib.request.urlopen(url, timeout=10).read()
    before = _threads()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    time.sleep(0.5)
    assert _threads() - before <= metrics_http.MAX_CONNECTIONS
    for s in idle:
        s.close()
    end = time.monotonic() + 20
    while True:  # the idle connections' slots free up within the handler timeout
        try:
            body = urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            assert time.monotonic() < end
            time.sleep(0.2)
    assert b"hgo_worker_rounds_total" in body
    with pytest.raises(OSError):  # not on the machine's other addresses
        probe = socket.create_connection((_other_address(), port), timeout=2)
        probe.close()


def _other_address() -> str:
    """An address of this host that is not loopback (skip when there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            addr = str(s.getsockname()[0])
        except OSError:
            addr = "127.0.0.1"
    if addr.startswith("127."):
        pytest.skip("no non-loopback address")
    return addr


def test_certificate_identities_are_distinct_and_unambiguous() -> None:
    """main joined SANs with ',' (so [a, b] == ["a,b"]) and ignored the CN when SANs exist;
    a certificate without a usable name shared one identity with all like it."""
    from hgo_server.auth import NoUsableName, certificate_identity

    class Ctx:  # what grpc.aio gives: auth_context() of a verified client certificate
        def __init__(self, **props: list[bytes]) -> None:
            self.props = {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"], **props}

        def auth_context(self) -> dict[str, list[bytes]]:
            return self.props

    two = certificate_identity(Ctx(x509_common_name=[b"w"], x509_subject_alternative_name=[b"a", b"b"]))
    one = certificate_identity(Ctx(x509_common_name=[b"w"], x509_subject_alternative_name=[b"a,b"]))
    other_cn = certificate_identity(Ctx(x509_common_name=[b"v"], x509_subject_alternative_name=[b"a", b"b"]))
    fewer = certificate_identity(Ctx(x509_common_name=[b"w"], x509_subject_alternative_name=[b"a"]))
    assert len({two, one, other_cn, fewer}) == 4
    assert two == 'x509:{"cn":"w","san":["a","b"]}'
    assert certificate_identity(Ctx(x509_common_name=[b"w"])) == 'x509:{"cn":"w","san":[]}'
    with pytest.raises(NoUsableName, match="no common name"):
        certificate_identity(Ctx(x509_subject=[b"O=acme"]))

    class Plain:
        def auth_context(self) -> dict[str, list[bytes]]:
            return {"transport_security_type": [b"insecure"]}

    assert certificate_identity(Plain()) is None
