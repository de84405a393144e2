"""Many device sessions in one hgo-worker process (``--sessions K``, ``--fleet FILE``).

Real hgo-server and hgo-worker processes on loopback: each hosted session is its own
worker to the server (its own id, rate, shard and prefix), the process's one /metrics
endpoint labels every series with its device, and bad fleet files exit 2 naming the file,
the entry and the key.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hgo_common import roundlog, throttle
from tests.procs import ProcessGroup, console, free_port

D = 31  # breast-cancer logistic regression
TAU = 200.0


def _server(procs: ProcessGroup, port: int, tmp: Path, n: int, rounds: int) -> subprocess.Popen[bytes]:
    argv = [
        *console("hgo-server"), "--port", str(port), "--bind", "127.0.0.1", "--dataset", "breast-cancer",
        "--model", "logistic", "--q", str(n), "--v", "1", "--tau", f"{TAU:g}ms", "--no-early-close",
        "--rounds", str(rounds), "--eval-every", "0", "--min-workers", str(n), "--num-shards", str(n),
        "--log", str(tmp / "rounds.jsonl"),
    ]  # fmt: skip
    return procs.start(argv, name="server")


def _wait_exit(proc: subprocess.Popen[bytes], procs: ProcessGroup, timeout: float) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        tail = procs.log(proc)[-3000:]
        raise AssertionError(f"{proc.args[:3]} still running after {timeout}s:\n{tail}") from None


def test_fleet_file_hosts_independent_devices(procs: ProcessGroup, tmp_path: Path) -> None:
    rates = [0.5, 1.0, 2.0, 4.0, 0.0]  # prefixes by tau: 3, 6, 12, 25 of 31, and all
    port = free_port()
    server = _server(procs, port, tmp_path, len(rates), rounds=40)
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"sessions": [
        {"name": f"dev{i}", "rate": r, "seed": 100 + i, "profile": "weak" if r and r < 2 else "powerful"}
        for i, r in enumerate(rates)
    ]}))  # fmt: skip
    worker = procs.start(
        [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--fleet", str(fleet), "--batch-size", "32",
         "--metrics-port", "0"], name="fleet",
    )  # fmt: skip
    text = ""
    deadline = time.monotonic() + 60
    while (m := re.search(r"metrics on :(\d+)/metrics", text)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
        text = procs.log(worker)
    assert m is not None, text
    metrics_url = f"http://127.0.0.1:{m.group(1)}/metrics"
    log = tmp_path / "rounds.jsonl"
    while len(roundlog.read(log) if log.exists() else []) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)  # a few rounds in, mid-run
    body = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    devices = set(re.findall(r'hgo_worker_rate_per_second\{[^}]*device="([^"]+)"', body))
    assert devices == {f"dev{i}" for i in range(5)}, body[:2000]
    pattern = r'hgo_worker_rate_per_second\{[^}]*device="([^"]+)"[^}]*\} (\S+)'
    rate_of = {d: float(v) for d, v in re.findall(pattern, body)}
    assert rate_of["dev2"] == 2000.0 and rate_of["dev0"] == 500.0  # per second: --rate is per ms
    # one process: its process metrics once, not once per device
    assert len(re.findall(r"^process_resident_memory_bytes ", body, re.M)) == 1
    assert _wait_exit(server, procs, 120) == 0
    assert _wait_exit(worker, procs, 30) == 0
    records = roundlog.read(tmp_path / "rounds.jsonl")
    assert len(records) == 40 and all(len(r["workers"]) == 5 for r in records)
    ids = {w["id"] for r in records for w in r["workers"]}
    assert len(ids) == 5  # five sessions, five workers to the server
    mean = {}
    for wid in ids:
        prefixes = [w["prefix"] for r in records[2:] for w in r["workers"] if w["id"] == wid]
        mean[wid] = float(np.median(prefixes))
    expected = sorted(throttle.expected_prefix(r, TAU, 32, D) for r in rates)
    got = sorted(mean.values())
    assert len(set(got)) == 5, got  # five distinct rates, five distinct prefixes
    for e, g in zip(expected, got, strict=True):
        # never more than the throttle allows; less only by what a busy machine delays a wake-up
        assert e - max(2.0, 0.5 * e) <= g <= e + 1, (expected, got)


def test_sessions_k_each_draws_its_own_rate(procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    server = _server(procs, port, tmp_path, 4, rounds=6)
    worker = procs.start(
        [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--sessions", "4", "--profile", "weak",
         "--seed", "7", "--name", "lab", "-v"], name="fleet",
    )  # fmt: skip
    assert _wait_exit(server, procs, 120) == 0
    assert _wait_exit(worker, procs, 30) == 0
    log = procs.log(worker)
    rates = set(re.findall(r"lab-\d: joined as worker \d+ .*rate ([0-9.e+-]+)", log))
    assert len(rates) == 4, log[-3000:]  # four draws from the weak profile, four values
    assert len(set(re.findall(r"(lab-\d): joined", log))) == 4


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not a JSON file"),
        ('{"sessions": []}', "at least one entry"),
        ('{"sessions": [{"rate": 1}, {"speed": 2}]}', "session 1: unknown key 'speed'"),
        ('{"sessions": [{"rate": -1}]}', "session 0: --rate must be >= 0"),
        ('{"sessions": [{"profile": "huge"}]}', "session 0: --profile must be one of"),
    ],
)
def test_bad_fleet_file_exits_2_naming_the_problem(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(content)
    res = subprocess.run(
        [*console("hgo-worker"), "--server", "127.0.0.1:1", "--fleet", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr and str(path) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_sessions_and_fleet_are_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text('{"sessions": [{}]}')
    res = subprocess.run(
        [*console("hgo-worker"), "--server", "127.0.0.1:1", "--fleet", str(path), "--sessions", "3"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "exclusive" in res.stderr, res.stderr


def test_hgo_run_packs_sessions_into_few_processes(procs: ProcessGroup, tmp_path: Path) -> None:
    """hgo-run --sessions-per-process 4: 12 workers in 3 processes, 2 of them Byzantine."""
    from hgo_lab.cluster import ClusterConfig, run_cluster

    cfg = ClusterConfig.make(
        workers=12, per_process=4, byzantine=2, attack="sign-flip", rule="median", model="logistic",
        hidden=None, dataset="digits-binary", tau="150", rounds=30, lr=0.5, out=tmp_path / "run",
        progress=False, timeout_s=240,
    )  # fmt: skip
    res = run_cluster(cfg, start=procs.start)
    assert res.rounds == 30 and res.worker_exit_codes == [0, 0, 0]
    assert sorted(p.name for p in (tmp_path / "run").glob("*.fleet.json")) == [
        "workers-0-3.fleet.json",
        "workers-4-7.fleet.json",
        "workers-8-11.fleet.json",
    ]
    ids = {w["id"] for r in res.records for w in r["workers"]}
    assert len(ids) == 12  # every session is its own worker
    byz = {w["id"] for r in res.records for w in r["workers"] if w["byzantine"]}
    assert len(byz) == 2
    assert res.metric > 0.8, res.metric  # median over 10 honest + 2 sign-flip still learns
