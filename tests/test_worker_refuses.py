"""A worker never runs what a server names, and checks every size it receives (issue 20, break 1).

A scripted, malicious server (grpc.aio on port 0 in a helper thread of the test
process, loopback only) welcomes a real ``hgo-worker`` process with a TrainingSpec that
names a module as its model or dataset, or sends a ShardPart announcing 2**31 rows. The
worker must refuse, naming what it refused, exit 2 and import nothing: a sentinel module
on the worker's ``sys.path`` writes a file when imported, ``this`` prints the Zen of Python.
On main 968fbdd the worker imported both, ``os:abort`` killed it (SIGABRT) and the
2**31-row part ended it with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from hgo_common import wire
from hgo_common.net import mapping
from hgo_common.net import messages as m
from hgo_common.net.proto import hgo_pb2_grpc
from hgo_worker import checks, client
from tests.procs import ProcessGroup, console

P = 20  # features: d = 21 for logistic regression
ZEN = "Beautiful is better than ugly"


def spec(**over: Any) -> m.Spec:
    base = m.Spec(
        model="logistic", layer_sizes=(P, 1), dim=P + 1, order="flat", groups=(), dataset="digits-binary",
        n_features=P, n_classes=2, algorithm="hgo", max_chunk_values=64, seed=1, partition="iid",
        num_shards=2, l2=0.0,
    )  # fmt: skip
    return m.Spec(**{**base.__dict__, **over})


def welcome(s: m.Spec) -> m.Welcome:
    return m.Welcome(session_id="s" * 32, worker_id=0, spec=s, shard_index=0, heartbeat_ms=200)


class Scripted(hgo_pb2_grpc.HGOServicer):  # type: ignore[misc]
    """Answers every Join with the same scripted messages, then holds the stream open."""

    def __init__(self, script: Sequence[m.ServerMessage]) -> None:
        self.script = list(script)
        self.joins = 0

    async def Session(self, request_iterator: Any, context: Any) -> None:
        first = mapping.worker_from_proto(await anext(aiter(request_iterator)))
        assert isinstance(first, m.JoinRequest)
        self.joins += 1
        for msg in self.script:
            await context.write(mapping.server_proto(msg))
        async for _ in request_iterator:  # until the worker goes
            pass


class ScriptedServer:
    """A :class:`Scripted` server in its own thread and event loop (the worker is a process)."""

    def __init__(self, script: Sequence[m.ServerMessage]) -> None:
        self.servicer = Scripted(script)
        self.port = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        server = grpc.aio.server()
        hgo_pb2_grpc.add_HGOServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await server.stop(None)

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        assert self._ready.wait(30), "the scripted server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A module ``hgosentinel`` that writes ``imported`` when imported; env putting it on the path."""
    pkg = tmp_path / "sentinel_path"
    pkg.mkdir()
    marker = tmp_path / "imported"
    (pkg / "hgosentinel.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\nModel = None\nData = None\n"
    )
    yield marker, {"PYTHONPATH": str(pkg)}


def run_worker(
    procs: ProcessGroup, script: Sequence[m.ServerMessage], *extra: str, env: dict[str, str] | None = None
) -> tuple[int, str, int]:
    """(exit code, log, Joins seen) of a real hgo-worker against the scripted server."""
    with ScriptedServer(script) as srv:
        proc = procs.start(
            [*console("hgo-worker"), "--server", f"127.0.0.1:{srv.port}", "--reconnect-timeout", "20",
             "--rate", "0", *extra],
            name="worker", env=env,
        )  # fmt: skip
        rc = procs.wait(proc, 60)
        return rc, procs.log(proc), srv.servicer.joins


@pytest.mark.parametrize(
    ("field", "name", "extra"),
    [
        ("model", "this:s", ()),  # importing `this` prints the Zen of Python
        ("model", "hgosentinel:Model", ()),
        ("dataset", "os:abort", ("--shard", "0/2")),  # on main: SIGABRT
        ("dataset", "hgosentinel:Data", ("--shard", "0/2")),
    ],
)
def test_a_spec_naming_a_module_is_refused_before_import(
    procs: ProcessGroup, sentinel: tuple[Path, dict[str, str]], field: str, name: str, extra: tuple[str, ...]
) -> None:
    marker, env = sentinel
    rc, log, joins = run_worker(procs, [welcome(spec(**{field: name}))], *extra, env=env)
    assert rc == 2, log
    assert f"names {field} {name!r}" in log and f"--allow-plugin {name!r}" in log, log
    assert "refusing what the server sent" in log and "Traceback" not in log, log
    assert joins == 1  # refused for good: not retried
    assert not marker.exists(), "the worker imported the sentinel module"
    assert ZEN not in log


def test_allow_plugin_is_what_lets_a_worker_import(
    procs: ProcessGroup, sentinel: tuple[Path, dict[str, str]]
) -> None:
    """The same spec with the operator's --allow-plugin: now the module is imported (then
    found not to be a model factory, which is the plug-in's problem, not the flag's)."""
    marker, env = sentinel
    rc, log, _ = run_worker(
        procs, [welcome(spec(model="hgosentinel:Model"))], "--allow-plugin", "hgosentinel:Model", env=env
    )
    assert marker.exists(), log
    assert "not allowed here" not in log
    assert rc == 3 and "model 'hgosentinel:Model': expected a factory" in log, log


def test_a_shard_of_2_pow_31_rows_is_refused_cleanly(procs: ProcessGroup) -> None:
    X = np.ones((1, P), dtype=np.float32)
    part = m.ShardSlice(
        row_offset=0, rows=1, cols=P, features=wire.encode(X), labels=wire.encode(np.zeros(1)), last=False,
        total_rows=2**31,
    )  # fmt: skip
    rc, log, _ = run_worker(procs, [welcome(spec()), part])
    assert rc == 2, log
    assert "ShardPart.total_rows = 2147483648" in log and "--max-shard-mb 2048" in log, log
    assert "Traceback" not in log and "MemoryError" not in log, log


# ---- the checks themselves, in process ------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"dim": 2**31 - 1}, "TrainingSpec.dim = 2147483647"),
        ({"dim": 0}, "TrainingSpec.dim = 0"),
        ({"n_features": 10**6}, "TrainingSpec.n_features = 1000000"),
        ({"n_classes": 10**6}, "TrainingSpec.n_classes = 1000000"),
        ({"layer_sizes": (P, 4_000_000, 1)}, "TrainingSpec.layer_sizes[1] = 4000000"),
        ({"layer_sizes": (P, 20, 1)}, "TrainingSpec.layer_sizes[0:2] = [20, 20]"),
        ({"layer_sizes": (1,) * 65}, "TrainingSpec.layer_sizes (count) = 65"),
        ({"groups": (P, 2)}, "TrainingSpec.groups = [20, 2]: they must sum to dim=21"),
        ({"max_chunk_values": 2**31}, "TrainingSpec.max_chunk_values = 2147483648"),
        ({"order": "spiral"}, "TrainingSpec.order = 'spiral'"),
        ({"l2": float("nan")}, "TrainingSpec.l2 = nan"),
    ],
)
def test_spec_sizes_are_refused_naming_field_value_and_limit(over: dict[str, Any], field: str) -> None:
    with pytest.raises(checks.Refused, match=r"expected|exceeds|must") as e:
        checks.check_welcome(welcome(spec(**over)))
    assert str(e.value).startswith(f"the server sent {field}"), str(e.value)


def test_heartbeat_interval_is_bounded() -> None:
    w = m.Welcome(session_id="s", worker_id=0, spec=spec(), shard_index=0, heartbeat_ms=2**63)
    want = r"Welcome.heartbeat_ms = 9223372036854775808: expected 0\.\.3600000"
    with pytest.raises(checks.Refused, match=want):
        checks.check_welcome(w)


def _part(
    lo: int, rows: int, total: int, *, cols: int = P, last: bool = False, label: float = 1.0
) -> m.ShardSlice:
    X = np.full((rows, cols), lo, dtype=np.float32)
    return m.ShardSlice(lo, rows, cols, wire.encode(X), wire.encode(np.full(rows, label)), last, total)


def test_shard_parts_are_checked_and_assembled() -> None:
    shard = checks.ShardAssembler(spec(), 2**20)
    assert not shard.add(_part(0, 3, 5))
    assert shard.add(_part(3, 2, 5, last=True))
    X, y = shard.result()
    assert X.shape == (5, P) and X[4, 0] == 3.0 and y.dtype == np.int64 and list(y) == [1] * 5
    bad = [
        ([_part(0, 3, 5), _part(2, 2, 5)], "ShardPart.row_offset = 2: expected 3"),
        ([_part(0, 3, 5), _part(3, 3, 5)], "ShardPart.rows = 3: expected 0..2"),
        ([_part(0, 3, 5), _part(3, 2, 6)], "ShardPart.total_rows = 6: the first part said 5"),
        ([_part(0, 3, 5, last=True)], "ShardPart.last = True: only 3 of total_rows=5"),
        ([_part(0, 3, 5, cols=P + 1)], f"ShardPart.cols = {P + 1}: expected TrainingSpec.n_features = {P}"),
        ([_part(0, 3, 5, label=7.0)], "class ids must be integers in 0..1"),
        ([_part(0, 1, 2**20)], "ShardPart.total_rows = 1048576: expected 0..12483"),
    ]
    for parts, message in bad:
        shard = checks.ShardAssembler(spec(), 2**20)
        with pytest.raises(checks.Refused) as e:
            for part in parts:
                shard.add(part)
        assert message in str(e.value), (message, str(e.value))
    short = m.ShardSlice(0, 2, P, b"\0" * 8, b"\0" * 8, True, 2)
    want = r"ShardPart.features \(bytes\) = 8: expected 4 \* rows \* cols = 160"
    with pytest.raises(checks.Refused, match=want):
        checks.ShardAssembler(spec(), 2**20).add(short)


def test_round_task_seed_and_weights_are_checked() -> None:
    ok = m.Task(round=0, order_seed=5, weights=b"\0" * 4 * (P + 1), tau_ms=10.0)
    checks.check_task(ok, P + 1)
    with pytest.raises(checks.Refused, match=r"RoundTask.order_seed = 4294967296: expected 0\.\.4294967295"):
        checks.check_task(m.Task(0, 2**32, ok.weights, 10.0), P + 1)
    with pytest.raises(checks.Refused, match=r"RoundTask.weights \(bytes\) = 4: expected 4 \* dim = 84"):
        checks.check_task(m.Task(0, 1, b"\0" * 4, 10.0), P + 1)


# ---- plaintext to a non-loopback address --------------------------------------------


@pytest.mark.parametrize(
    ("server", "tls", "warns"),
    [
        ("127.0.0.1:50051", False, False),
        ("127.8.9.1:50051", False, False),
        ("localhost:50051", False, False),
        ("[::1]:50051", False, False),
        ("192.0.2.7:50051", False, True),  # TEST-NET-1: decided, never dialled
        ("[2001:db8::1]:50051", False, True),
        ("hgo-server:50051", False, True),  # a name may resolve anywhere
        ("192.0.2.7:50051", True, False),
    ],
)
def test_plaintext_warning_decision(server: str, tls: bool, warns: bool) -> None:
    warning = client.plaintext_warning(server, tls)
    assert (warning is not None) == warns
    if warning is not None:
        assert server in warning and "without TLS" in warning and "--tls-ca" in warning


def test_plaintext_warning_is_logged_once_per_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hgo_worker")
    server = "192.0.2.77:50051"
    client._WARNED_PLAINTEXT.discard(server)  # the set is per process: start from "not yet warned"
    assert client.warn_plaintext_once(server, tls=False)
    assert not client.warn_plaintext_once(server, tls=False)
    assert not client.warn_plaintext_once("127.0.0.1:50051", tls=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"PLAINTEXT: connecting to {server} without TLS")


def test_a_fleet_entry_adds_to_the_command_lines_allow_list(tmp_path: Path) -> None:
    from hgo_worker import fleet

    base = client.WorkerConfig(server="127.0.0.1:1", allow_plugins=("softmax",))
    path = tmp_path / "fleet.json"
    fleet.write_fleet(path, [{"name": "a"}, {"name": "b", "allow_plugins": ["blobs"]}])
    a, b = fleet.load_fleet(path, base)
    assert a.allow_plugins == ("softmax",) and b.allow_plugins == ("softmax", "blobs")
    fleet.write_fleet(path, [{"allow_plugins": "blobs"}])
    with pytest.raises(fleet.FleetError, match="session 0: allow_plugins must be a list of plug-in names"):
        fleet.load_fleet(path, base)
