"""Authentication and TLS building blocks against a real grpc.aio server on port 0.

A stub HGO servicer records every call it handles, so "no side effects" is checked
directly: a rejected call must never reach it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest

from hgo_common.net import credentials
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_server import auth
from hgo_server.auth import AuthInterceptor, TokenFileError, TokenStore
from tests.tlsgen import PKI, make_pki


class StubServicer(hgo_pb2_grpc.HGOServicer):
    """Answers Status with the caller's identity; Session welcomes with it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Status(self, request: hgo_pb2.StatusRequest, context: Any) -> hgo_pb2.StatusReply:
        self.calls.append("Status")
        return hgo_pb2.StatusReply(
            state=f"identity={auth.current_identity()}", active_sessions=len(self.calls)
        )

    async def Session(
        self, request_iterator: AsyncIterator[hgo_pb2.WorkerMessage], context: Any
    ) -> AsyncIterator[hgo_pb2.ServerMessage]:
        self.calls.append("Session")
        async for msg in request_iterator:
            if msg.HasField("join"):
                # the identity must still be visible after awaiting the stream
                await asyncio.sleep(0)
                yield hgo_pb2.ServerMessage(
                    welcome=hgo_pb2.Welcome(session_id=f"{auth.current_identity()}:{msg.join.name}")
                )
                return


async def _serve(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    creds: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, StubServicer]:
    server = grpc.aio.server(interceptors=list(interceptors))
    servicer = StubServicer()
    hgo_pb2_grpc.add_HGOServicer_to_server(servicer, server)
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("localhost:0", creds)
    await server.start()
    return server, port, servicer


async def _session(stub: hgo_pb2_grpc.HGOStub, metadata: Sequence[tuple[str, str]] = ()) -> str:
    call = stub.Session(metadata=tuple(metadata))
    await call.write(hgo_pb2.WorkerMessage(join=hgo_pb2.Join(protocol_version=1, name="w")))
    reply = await call.read()
    call.cancel()
    return str(reply.welcome.session_id)


# ----------------------------------------------------------------------------- TokenStore


def test_token_store_options(tmp_path: Path) -> None:
    assert TokenStore.from_options(None, None) is None
    store = TokenStore.from_options("s3cret", None)
    assert store is not None
    assert store.identify("s3cret") == auth.SHARED_IDENTITY
    assert (
        store.identify("s3cre") is None and store.identify("s3cret ") is None and store.identify("") is None
    )
    for bad in ("", "  ", " padded "):
        with pytest.raises(ValueError, match="--token"):
            TokenStore.from_options(bad, None)


def test_tokens_file(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    lines = [
        "# workers of the lab", "", "worker-1  tok-aaa-0123456789", "   # indented comment",
        "worker-2\ttok-bbb-0123456789",
    ]  # fmt: skip
    f.write_text("\n".join([*lines, "worker-1 tok-ccc-0123456789", ""]))
    f.chmod(0o600)
    store = TokenStore.from_options("shared-x-0123456789", f)
    assert store is not None and len(store) == 4
    assert store.identify("tok-aaa-0123456789") == "worker-1"
    assert store.identify("tok-ccc-0123456789") == "worker-1"  # rotation: two tokens for one worker
    assert store.identify("tok-bbb-0123456789") == "worker-2"
    assert store.identify("shared-x-0123456789") == "shared"
    assert store.identify("worker-1") is None


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("worker-1 tok-0123456789abcdef\nworker-2\n", ":2:", "got 1 field"),
        ("w1 aaaaaaaaaaaaaaaa\n\nw2 b c\n", ":3:", "got 3 field"),
        ("w1 a  # trailing comment\n", ":1:", "comments go on their own line"),
        ("w1 same-0123456789ab\nw2 same-0123456789ab\n", ":2:", "already used on line 1"),
        ("w1 tok-0123456789abcdef\nw2 short\n", ":2:", "the token is 5 bytes, shorter than the 16"),
        ("w1 tok-0123456789abcdef\nw2 change-me-before-use\n", ":2:", "placeholder"),
        ("# nothing\n\n", "", "no 'worker-id token' lines"),
    ],
)
def test_bad_tokens_file_names_file_and_line(tmp_path: Path, text: str, where: str, problem: str) -> None:
    f = tmp_path / "tokens.txt"
    f.write_text(text)
    with pytest.raises(TokenFileError) as info:
        TokenStore.from_options(None, f)
    assert f"{f}{where}" in str(info.value) and problem in str(info.value)


def test_shared_token_may_not_equal_a_file_token(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("w1 tok-0123456789abcdef\n")
    with pytest.raises(ValueError, match="already the token"):
        TokenStore.from_options("tok-0123456789abcdef", f)


def test_world_readable_tokens_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "tokens"
    f.write_text("w1 tok-0123456789abcdef\n")
    f.chmod(0o644)
    with caplog.at_level("WARNING", logger="hgo_server.auth"):
        TokenStore.from_options(None, f)
    assert "readable by other users" in caplog.text


def test_identify_uses_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    store = TokenStore()
    store.add("a", "tok-a-0123456789ab")
    store.add("b", "tok-b-0123456789ab")
    seen: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(x: bytes, y: bytes) -> bool:
        seen.append((x, y))
        return real(x, y)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert store.identify("tok-a-0123456789ab") == "a"
    assert len(seen) == 2  # no early exit on the first match


# ----------------------------------------------------------------------------- interceptor


async def test_missing_or_wrong_token_is_unauthenticated_without_side_effects() -> None:
    store = TokenStore.from_options("right", None)
    assert store is not None
    rejected: list[str] = []
    server, port, servicer = await _serve([AuthInterceptor(store, on_reject=rejected.append)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = hgo_pb2_grpc.HGOStub(channel)
            bad_metadata: list[tuple[tuple[str, str], ...]] = [
                (),
                (("authorization", "Bearer wrong"),),
                (("authorization", "Basic right"),),
                (("authorization", "Bearer "),),
                (("authorization", "right"),),
            ]
            for md in bad_metadata:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Status(hgo_pb2.StatusRequest(), metadata=md)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
                # No Join written: the server refuses from the metadata alone, and a write racing
                # that refusal fails on the client with INTERNAL (seen under load), hiding it.
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Session(metadata=md).read()
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, md
            assert servicer.calls == []  # the handler never ran
            assert rejected == ["unauthenticated"] * 2 * len(bad_metadata)
            # and the right token works, with the identity visible to the handler
            ok = credentials.bearer_metadata("right")
            reply = await stub.Status(hgo_pb2.StatusRequest(), metadata=ok)
            assert reply.state == "identity=shared"
            assert await _session(stub, ok) == "shared:w"
            assert servicer.calls == ["Status", "Session"]
    finally:
        await server.stop(None)


async def test_session_rejected_before_any_message_is_read() -> None:
    store = TokenStore.from_options("right", None)
    assert store is not None
    server, port, servicer = await _serve([AuthInterceptor(store)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = hgo_pb2_grpc.HGOStub(channel).Session()
            # no message written at all: the rejection must still arrive promptly
            code = await asyncio.wait_for(call.code(), timeout=10)
            assert code == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in (await call.details())
            assert servicer.calls == []
    finally:
        await server.stop(None)


async def test_per_worker_identities_and_exempt_methods(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("alice tok-a-0123456789ab\nbob tok-b-0123456789ab\n")
    f.chmod(0o600)
    store = TokenStore.from_options(None, f)
    assert store is not None
    server, port, _ = await _serve([AuthInterceptor(store, exempt={"/hgo.v1.HGO/Status"})])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = hgo_pb2_grpc.HGOStub(channel)
            assert await _session(stub, credentials.bearer_metadata("tok-a-0123456789ab")) == "alice:w"
            assert await _session(stub, credentials.bearer_metadata("tok-b-0123456789ab")) == "bob:w"
            # concurrent calls keep their own identity
            names = await asyncio.gather(
                *(
                    _session(stub, credentials.bearer_metadata(t))
                    for t in ["tok-a-0123456789ab", "tok-b-0123456789ab"] * 5
                )
            )
            assert names == ["alice:w", "bob:w"] * 5
            reply = await stub.Status(hgo_pb2.StatusRequest())  # exempt: no token needed
            assert reply.state == "identity=None"
    finally:
        await server.stop(None)


async def test_on_reject_failure_still_rejects() -> None:
    store = TokenStore.from_options("right", None)
    assert store is not None

    def broken(reason: str) -> None:
        raise RuntimeError("metrics down")

    server, port, servicer = await _serve([AuthInterceptor(store, on_reject=broken)])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await hgo_pb2_grpc.HGOStub(channel).Status(hgo_pb2.StatusRequest())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert servicer.calls == []
    finally:
        await server.stop(None)


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _status_over(
    port: int, creds: grpc.ChannelCredentials, metadata: Sequence[tuple[str, str]] = ()
) -> str:
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as channel:
        reply = await hgo_pb2_grpc.HGOStub(channel).Status(
            hgo_pb2.StatusRequest(), metadata=tuple(metadata), timeout=10
        )
        return str(reply.state)


async def test_tls_server_authentication(pki: PKI) -> None:
    server, port, servicer = await _serve(creds=auth.server_credentials(pki.server_cert, pki.server_key))
    try:
        assert await _status_over(port, credentials.channel_credentials(pki.ca_cert)) == "identity=None"
        # a client trusting another CA refuses the server's certificate
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _status_over(port, credentials.channel_credentials(pki.rogue_ca_cert))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # plaintext to a TLS port fails too
        async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await hgo_pb2_grpc.HGOStub(channel).Status(hgo_pb2.StatusRequest(), timeout=10)
        assert servicer.calls == ["Status"]
    finally:
        await server.stop(None)


async def test_mutual_tls_refuses_clients_without_a_good_certificate(pki: PKI) -> None:
    store = TokenStore.from_options("right", None)
    assert store is not None
    creds = auth.server_credentials(pki.server_cert, pki.server_key, pki.ca_cert)
    server, port, servicer = await _serve([AuthInterceptor(store)], creds=creds)
    token = credentials.bearer_metadata("right")
    try:
        good = credentials.channel_credentials(pki.ca_cert, pki.client_cert, pki.client_key)
        assert await _status_over(port, good, token) == "identity=shared"
        for name, client in [
            ("no client certificate", credentials.channel_credentials(pki.ca_cert)),
            (
                "certificate of another CA",
                credentials.channel_credentials(pki.ca_cert, pki.rogue_cert, pki.rogue_key),
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _status_over(port, client, token)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, name
        # mTLS does not replace the token: a good certificate without a token is still refused
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _status_over(port, good)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert servicer.calls == ["Status"]
    finally:
        await server.stop(None)


def test_credential_file_errors(tmp_path: Path, pki: PKI) -> None:
    with pytest.raises(ValueError, match=r"cannot read TLS key .*missing\.key"):
        auth.server_credentials(pki.server_cert, tmp_path / "missing.key")
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(ValueError, match=r"TLS CA .*junk\.pem is not PEM"):
        credentials.channel_credentials(junk)
    with pytest.raises(ValueError, match="go together"):
        credentials.channel_credentials(pki.ca_cert, pki.client_cert, None)


# ----------------------------------------------------------------------------- end to end


async def test_server_with_token_refuses_without_side_effects() -> None:
    from tests.wireclient import serving

    async with serving(q=2, v=1, tau=50.0, token="s3cret", heartbeat_ms=500) as s:
        ok = credentials.bearer_metadata("s3cret")
        for md in [(), credentials.bearer_metadata("wrong"), (("authorization", "s3cret"),)]:
            c = s.client(md)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await c.join()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.status(md)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert s.rejected("unauthenticated") == 6
        assert len(s.core.sessions) == 0 and s.core._next_worker_id == 0  # no session was ever created
        st = await s.status(ok)
        assert (st.state, st.active_sessions, st.round) == ("waiting", 0, 0)
        good = s.client(ok)
        await good.join(name="good")
        assert (await s.status(ok)).active_sessions == 1
        await good.close()


async def test_worker_cannot_act_for_another_workers_session(tmp_path: Path) -> None:
    from tests.wireclient import serving, wait_for

    f = tmp_path / "tokens"
    f.write_text("alice tok-alice-0123456789\nbob tok-bob-0123456789\n")
    f.chmod(0o600)
    async with serving(q=2, v=1, tau=50.0, early_close=False, tokens_file=str(f), heartbeat_ms=500) as s:
        alice = s.client(credentials.bearer_metadata("tok-alice-0123456789"))
        await alice.join(name="alice")
        alice.respond()
        bob = s.client(credentials.bearer_metadata("tok-bob-0123456789"))
        await bob.join(name="bob")
        identities = sorted(str(x.identity) for x in s.core.sessions.values())
        assert identities == ["alice", "bob"]
        task = await bob.next_task()
        # bob, authenticated, names alice's session: refused, alice unaffected
        await bob.chunk(task.round, 0, np.zeros(4, np.float32).tobytes(), session_id=alice.session_id)
        assert await bob.finish() == grpc.StatusCode.PERMISSION_DENIED
        await wait_for(lambda: len(s.core.sessions) == 1, what="bob's session ended")
        assert [x.identity for x in s.core.sessions.values()] == ["alice"]
        k = s.core.round
        await wait_for(lambda: s.core.round > k + 2, what="rounds with alice alone")
        await alice.close()


def _status_secure(port: int, creds: grpc.ChannelCredentials, token: str) -> hgo_pb2.StatusReply:
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        return hgo_pb2_grpc.HGOStub(ch).Status(  # type: ignore[no-any-return]
            hgo_pb2.StatusRequest(), metadata=credentials.bearer_metadata(token), timeout=10
        )


@pytest.mark.timeout(240)
def test_cli_mutual_tls_and_tokens_end_to_end(procs: Any, pki: PKI, tmp_path: Path) -> None:
    import time

    from tests.procs import console

    tokens = tmp_path / "tokens"
    tokens.write_text("worker-a tok-a-0123456789ab\nworker-b tok-b-0123456789ab\n")
    tokens.chmod(0o600)
    port_file = tmp_path / "port"
    server = procs.start(
        [
            *console("hgo-server"), "--port", "0", "--port-file", str(port_file),
            "--dataset", "breast-cancer", "--q", "2", "--v", "1", "--min-workers", "2", "--rounds", "30",
            "--tau", "100ms", "--eval-every", "0", "--tokens-file", str(tokens),
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-ca", str(pki.ca_cert), "--log", str(tmp_path / "rounds.jsonl"),
        ],
        name="server",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert server.poll() is None, procs.log(server)
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    port = int(port_file.read_text())
    tls = ["--tls-ca", str(pki.ca_cert), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]

    def worker(name: str, *extra: str) -> Any:
        argv = [
            *console("hgo-worker"),
            "--server",
            f"127.0.0.1:{port}",
            "--profile",
            "powerful",
            "--name",
            name,
        ]
        return procs.start([*argv, "--reconnect-timeout", "4", *extra], name=name)

    # refused: wrong token (rejected for good: exit 3), no client certificate, a rogue CA's certificate
    wrong = worker("wrong-token", "--token", "tok-x-0123456789ab", *tls)
    no_cert = worker("no-cert", "--token", "tok-a-0123456789ab", "--tls-ca", str(pki.ca_cert))
    rogue = worker(
        "rogue", "--token", "tok-a-0123456789ab", "--tls-ca", str(pki.ca_cert),
        "--tls-cert", str(pki.rogue_cert), "--tls-key", str(pki.rogue_key),
    )  # fmt: skip
    assert procs.wait(wrong, 60) == 3, procs.log(wrong)
    assert procs.wait(no_cert, 60) != 0
    assert procs.wait(rogue, 60) != 0
    good_creds = credentials.channel_credentials(pki.ca_cert, pki.client_cert, pki.client_key)
    st = _status_secure(port, good_creds, "tok-a-0123456789ab")
    assert (st.state, st.active_sessions, st.round) == ("waiting", 0, 0)
    # accepted: both workers with their own token and a good certificate train to the end
    good = [
        worker("a", "--token", "tok-a-0123456789ab", *tls),
        worker("b", "--token", "tok-b-0123456789ab", *tls),
    ]
    assert procs.wait(server, 120) == 0, procs.log(server)[-3000:]
    for w in good:
        assert procs.wait(w, 60) == 0, procs.log(w)[-2000:]
    log = procs.log(server)
    assert "identity=worker-a" in log and "identity=worker-b" in log
    assert "done: rounds=30" in log


@pytest.mark.timeout(180)
def test_worker_tls_server_name_override(procs: Any, tmp_path: Path) -> None:
    """A certificate naming only ``hgo-server``, dialled as 127.0.0.1: refused unless the
    worker is told which name to verify (--tls-server-name)."""
    import time

    from tests.procs import console

    pki = make_pki(tmp_path / "pki", server_ips=(), server_dns=("hgo-server",))
    port_file = tmp_path / "port"
    server = procs.start(
        [
            *console("hgo-server"), "--port", "0", "--port-file", str(port_file),
            "--dataset", "breast-cancer", "--q", "1", "--v", "1", "--min-workers", "1", "--rounds", "5",
            "--tau", "100ms", "--eval-every", "0",
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
        ],
        name="server",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert server.poll() is None, procs.log(server)
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    port = int(port_file.read_text())

    def worker(name: str, *extra: str) -> Any:
        argv = [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--profile", "powerful"]
        argv += ["--name", name, "--tls-ca", str(pki.ca_cert), *extra]
        return procs.start(argv, name=name)

    # the certificate does not name 127.0.0.1: every attempt fails the handshake, gives up (1)
    plain = worker("no-override", "--reconnect-timeout", "3")
    assert procs.wait(plain, 60) == 1, procs.log(plain)
    assert "giving up" in procs.log(plain)
    # a wrong name fails the same way
    wrong = worker("wrong-name", "--reconnect-timeout", "3", "--tls-server-name", "not-hgo-server")
    assert procs.wait(wrong, 60) == 1, procs.log(wrong)
    # the name on the certificate: trains to the end
    good = worker("override", "--reconnect-timeout", "30", "--tls-server-name", "hgo-server")
    assert procs.wait(good, 90) == 0, procs.log(good)[-2000:]
    assert procs.wait(server, 60) == 0, procs.log(server)[-3000:]
    assert "done: rounds=5" in procs.log(server)
