"""Real device constraints (hgo_lab.constraints, issue 21): CPU quota, shaped link, latency, cleanup.

The end-to-end tests run a real ``hgo-server`` and real ``hgo-worker`` processes on
loopback, one of them inside a constrained device (a cgroup with a CFS quota, a network
namespace whose veth pair is shaped by ``tbf``), both with ``--throttle off`` so that the
prefix each delivers is what it really computes and sends by τ. Assertions are on the
server's round log, averaged over rounds with generous margins (the machine is shared).
Traffic goes only to loopback and to the namespaces created here. Needs root, the cgroup
``cpu`` controller and iproute2 (``ip``, ``tc``); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hgo_common import roundlog
from hgo_lab import constraints
from hgo_lab.constraints import ConstraintError, DeviceLimits, Lab
from hgo_worker import cli as worker_cli
from hgo_worker import pacing
from tests.procs import ProcessGroup, console, free_port

pytestmark = [pytest.mark.timeout(300)]


def _why_not(limits: DeviceLimits) -> str | None:
    try:
        constraints.check_support(limits)
    except ConstraintError as exc:
        return str(exc)
    return None


CPU = DeviceLimits(cpu_share=0.1)
NET = DeviceLimits(uplink=1_000_000)


def _skip_unless(limits: DeviceLimits) -> None:
    reason = _why_not(limits)
    if reason:
        pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab
    assert _mine(lab.owner).empty(), f"left behind: {_mine(lab.owner).as_dict()}"


def _mine(owner: int) -> constraints.Leftovers:
    """What exists on the host for the lab of pid ``owner`` (alive or not)."""
    found = constraints.leftovers(include_live=True)
    tag = f"{constraints.PREFIX}{owner}-"
    link = f"{constraints.LINK_PREFIX}{owner:07x}"
    return constraints.Leftovers(
        cgroups=[p for p in found.cgroups if p.name.startswith(tag)],
        namespaces=[n for n in found.namespaces if n.startswith(tag)],
        links=[n for n in found.links if n.startswith(link)],
        state_files=[p for p in found.state_files if p.name.startswith(tag)],
    )


def _until(pred: Callable[[], object], timeout: float, what: str, procs: ProcessGroup | None = None) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            logs = (
                ""
                if procs is None
                else "\n".join(f"--- pid {p.pid}\n{procs.log(p)[-2500:]}" for p in procs.procs)
            )
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")
        time.sleep(0.2)


def _server(procs: ProcessGroup, tmp: Path, port: int, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    rlog = tmp / "rounds.jsonl"
    server = procs.start(
        [
            *console("hgo-server"), "--bind", "127.0.0.1", "--port", str(port), "--dataset", "digits",
            "--model", "mlp", "--q", "2", "--v", "1", "--no-early-close", "--rounds", "100000",
            "--min-workers", "2", "--eval-every", "0", "--log", str(rlog),
            # A device that never makes τ is evicted after --evict-after silent rounds (20):
            # by design, but here it is the subject of the measurement.
            "--evict-after", "0", *extra,
        ],
        name="server",
    )  # fmt: skip
    return server, rlog


def _ids(procs: ProcessGroup, server: subprocess.Popen[bytes]) -> dict[str, int]:
    return {name: int(i) for i, name in re.findall(r"join worker=(\d+) name='(\w+)'", procs.log(server))}


def _mean_prefixes(rlog: Path, ids: dict[str, int], skip: int) -> tuple[dict[str, float], int]:
    """Mean prefix per worker name over the rounds (after ``skip``) that sampled both."""
    by_id = {i: n for n, i in ids.items()}
    sums = dict.fromkeys(ids, 0.0)
    rounds = 0
    for rec in roundlog.read(rlog)[skip:]:
        got = {by_id[w["id"]]: w["prefix"] for w in rec["workers"] if w["id"] in by_id}
        if len(got) == len(ids):
            rounds += 1
            for n, v in got.items():
                sums[n] += v
    return {n: s / max(1, rounds) for n, s in sums.items()}, rounds


def _run_pair(
    procs: ProcessGroup, tmp: Path, lab: Lab, limits: DeviceLimits, server_args: list[str],
    worker_args: list[str], rounds: int,
) -> tuple[dict[str, float], int, constraints.Device, Path]:  # fmt: skip
    """A server, a free worker and one in a device with ``limits``; mean prefixes over ``rounds``."""
    port = free_port()
    server, rlog = _server(procs, tmp, port, *server_args)
    dev = lab.device(limits, name="constrained")
    worker = [*console("hgo-worker"), "--throttle", "off", "--reconnect-timeout", "120", *worker_args]
    procs.start([*worker, "--server", f"127.0.0.1:{port}", "--name", "free"], name="free")
    procs.start(
        dev.wrap([*worker, "--server", dev.server_address("127.0.0.1", port), "--name", "slow"]), name="slow"
    )
    _until(lambda: len(_ids(procs, server)) == 2, 180, "both workers to join", procs)
    ids = _ids(procs, server)

    def warm() -> int | None:
        # Measure from the first round the free worker delivered anything: the rounds
        # before pay for start-up (C_k expansion, first BLAS calls) on a busy machine.
        recs = roundlog.read(rlog) if rlog.exists() else []
        return next(
            (
                k
                for k, r in enumerate(recs)
                if any(w["id"] == ids["free"] and w["prefix"] > 0 for w in r["workers"])
            ),
            None,
        )

    _until(lambda: warm() is not None, 180, "the free worker's first prefix", procs)
    skip = warm()
    assert skip is not None
    _until(lambda: _mean_prefixes(rlog, ids, skip)[1] >= rounds, 240, f"{rounds} rounds with both", procs)
    means, n = _mean_prefixes(rlog, ids, skip)
    return means, n, dev, rlog


# ------------------------------------------------------------------ (a) CPU quota


@pytest.mark.slow
def test_a_worker_under_a_10pct_cpu_quota_delivers_a_shorter_prefix(
    procs: ProcessGroup, tmp_path: Path, lab: Lab
) -> None:
    _skip_unless(CPU)
    # mlp 64-2048-10 (d = 153,610), s = 512: one full gradient costs ~42 ms of CPU here
    # (time.process_time), so at 10 % of a core (10 ms per 100 ms period) it needs >= 5
    # periods, ~450 ms of wall time, 1.5 x τ; unconstrained it fits in τ with room to spare.
    means, n, dev, _ = _run_pair(
        procs, tmp_path, lab, CPU, ["--hidden", "2048", "--tau", "300ms"], ["--batch-size", "512"], rounds=10
    )
    assert dev.cgroup is not None
    assert dev.cgroup.quota() == (10_000, 100_000)
    assert dev.cgroup.throttled() > 0, "the quota never throttled the worker"
    d = 153_610
    print(
        f"\n[cpu] mean prefix over {n} rounds (d={d}): free {means['free']:.0f}, "
        f"10% CPU {means['slow']:.0f}; throttled periods {dev.cgroup.throttled()}"
    )
    # On a loaded machine (load 9 on 2 cores) the free worker gets ~20 % of a core and misses τ
    # in some rounds too; the measurement starts at its first full delivery, so its mean is
    # at least d / rounds. The claim is relative: the quota'd device delivers far less.
    assert means["free"] >= d / n, means
    assert means["slow"] < 0.7 * means["free"], means


# ------------------------------------------------------------------ (b) shaped link


@pytest.mark.slow
@pytest.mark.netns
def test_a_1mbit_uplink_delivers_fewer_coordinates_than_loopback(
    procs: ProcessGroup, tmp_path: Path, lab: Lab
) -> None:
    _skip_unless(NET)
    tau_ms = 150.0
    # mlp 64-128-10 (d = 9,610: 38 KB a gradient) in chunks of 1,024 values (4 KB): at
    # 1 Mbit/s (125 KB/s) at most ~19 KB fit in τ = 150 ms, half of what loopback delivers.
    means, n, dev, rlog = _run_pair(
        procs, tmp_path, lab, NET,
        ["--hidden", "128", "--tau", f"{tau_ms:g}ms", "--max-chunk-values", "1024"], ["--batch-size", "32"],
        rounds=15,
    )  # fmt: skip
    assert dev.link is not None
    q = dev.link.qdiscs()
    assert "tbf" in q["device"] and "rate 1Mbit" in q["device"], q
    d = 9_610
    recs = roundlog.read(rlog)
    rates = constraints.delivered_rates(recs[-1])
    print(f"\n[link] mean prefix over {n} rounds (d={d}, tau={tau_ms:g} ms): loopback {means['free']:.0f}, "
          f"1 Mbit/s {means['slow']:.0f}; last round's delivered rates (coords/ms) {rates}")  # fmt: skip
    assert means["free"] > 0.9 * d, means
    assert means["slow"] < 0.7 * means["free"], means
    # What 1 Mbit/s can carry in τ, plus the bucket and one chunk in flight: the shaping is real.
    ceiling = (1_000_000 / 8 * tau_ms / 1000 + 2 * 4096 + 4096) / 4
    assert means["slow"] <= ceiling, (means, ceiling)


# ------------------------------------------------------------------ latency relay (no root)


def test_the_delay_relay_adds_its_latency_each_way_and_keeps_the_bytes() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> tuple[float, float, bytes]:
        srv = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        relay = constraints.DelayRelay(("127.0.0.1", 0), ("127.0.0.1", port), 80.0).start()
        try:
            payload = os.urandom(300_000)
            t0 = time.monotonic()
            r, w = await asyncio.open_connection("127.0.0.1", relay.port)
            w.write(b"x")
            await w.drain()
            await r.readexactly(1)
            rtt = time.monotonic() - t0

            async def send() -> None:
                w.write(payload)
                await w.drain()
                w.write_eof()

            _, back = await asyncio.gather(send(), r.readexactly(len(payload)))
            w.close()
            # The same exchange without the relay, for the baseline.
            t0 = time.monotonic()
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            w2.write(b"x")
            await w2.drain()
            await r2.readexactly(1)
            direct = time.monotonic() - t0
            w2.close()
            return rtt, direct, back if back == payload else b""
        finally:
            relay.close()
            srv.close()

    rtt, direct, back = asyncio.run(main())
    assert back, "the relay changed the bytes"
    assert rtt >= 0.160, f"round trip through an 80 ms relay took {rtt * 1000:.0f} ms (< 2 x 80 ms)"
    assert direct < rtt - 0.1


# ------------------------------------------------------------------ (c) cleanup


@pytest.mark.netns
def test_a_lab_removes_its_cgroup_namespace_link_and_qdiscs_on_close() -> None:
    _skip_unless(DeviceLimits(cpu_share=0.2, uplink=2_000_000, downlink=2_000_000))
    with Lab() as lab:
        dev = lab.device(DeviceLimits.parse(cpu_share=0.2, uplink="2mbit", downlink="2mbit"))
        assert dev.cgroup is not None and dev.link is not None
        assert dev.cgroup.path.is_dir()
        assert dev.link.ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        q = dev.link.qdiscs()
        assert "tbf" in q["host"] and "rate 2Mbit" in q["host"], q
        sleeper = subprocess.Popen(dev.wrap(["sleep", "60"]), start_new_session=True)
        _until(lambda: sleeper.pid in dev.cgroup.pids(), 20, "the sleeper inside the cgroup")  # type: ignore[union-attr]
        ns = dev.link.ns

        def in_ns() -> bool:
            # The launcher joins the cgroup first, then the namespace, then execs: wait for both.
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            return str(sleeper.pid) in out.split()

        _until(in_ns, 20, "the sleeper inside the namespace")
        host_if = dev.link.host_if
    assert sleeper.wait(10) == -signal.SIGKILL  # what ran inside the device went with it
    assert _mine(os.getpid()).empty(), _mine(os.getpid()).as_dict()
    assert host_if not in subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout


CHILD = """
import json, subprocess, sys, time
from hgo_lab.constraints import Lab, DeviceLimits
lab = Lab(reaper={reaper})
dev = lab.device(DeviceLimits.parse(cpu_share=0.3, uplink="1mbit", downlink="1mbit", latency="10ms"))
sleeper = subprocess.Popen(dev.wrap(["sleep", "120"]), start_new_session=True)
print(json.dumps({{"sleeper": sleeper.pid, **dev.describe()}}), flush=True)
time.sleep(120)
"""


def _killed_child(reaper: bool) -> tuple[int, dict[str, Any]]:
    """A process that builds a lab and a device, then dies by SIGKILL (no atexit, no finally)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(reaper=reaper)], stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"the child died: rc={child.wait(10)}"
    desc = json.loads(line)
    _until(lambda: Path(desc["cgroup"], "cgroup.procs").read_text().split() != [], 20, "the sleeper")
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(10)
    return child.pid, desc


def _gone(owner: int, desc: dict[str, Any]) -> bool:
    ip = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    tc = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    return (
        _mine(owner).empty() and not Path(desc["cgroup"]).exists() and desc["netns"] not in ip
        and desc["host_if"] not in tc and not constraints._pid_alive(desc["sleeper"])
    )  # fmt: skip


@pytest.mark.netns
def test_the_reaper_cleans_up_after_a_lab_killed_mid_run() -> None:
    _skip_unless(DeviceLimits(cpu_share=0.3, uplink=1_000_000))
    owner, desc = _killed_child(reaper=True)
    _until(lambda: _gone(owner, desc), 30, f"the reaper to remove {desc}")


@pytest.mark.netns
def test_clean_removes_what_a_killed_lab_without_reaper_left() -> None:
    _skip_unless(DeviceLimits(cpu_share=0.3, uplink=1_000_000))
    owner, desc = _killed_child(reaper=False)
    try:
        time.sleep(0.5)
        assert not _gone(owner, desc)
        listed = json.loads(
            subprocess.run(
                [sys.executable, "-m", "hgo_lab.constraints", "list"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert desc["cgroup"] in listed["cgroups"] and desc["netns"] in listed["namespaces"], listed
        assert desc["host_if"] in listed["links"], listed
        subprocess.run(
            [sys.executable, "-m", "hgo_lab.constraints", "clean"], check=True, capture_output=True
        )
        assert _gone(owner, desc), _mine(owner).as_dict()
    finally:
        constraints.clean()


# ------------------------------------------------------------------ refusals and settings


def test_without_root_the_constraints_are_refused_naming_root() -> None:
    if os.geteuid() != 0:
        err = _why_not(CPU)
        assert err is not None and "root" in err
        return
    # Drop to nobody inside the interpreter (the venv's python may not be executable by nobody).
    script = (
        "import os, sys; from hgo_lab import constraints; os.setgroups([]); os.setgid(65534); "
        "os.setuid(65534); sys.exit(constraints.main(['check', '--cpu-share', '0.1']))"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 2, res
    assert "need root" in res.stderr, res.stderr


def test_the_cgroup_backend_names_what_it_found() -> None:
    try:
        backend = constraints.cgroup_backend()
    except ConstraintError as exc:
        assert "cpu" in str(exc)  # names the controller it lacks
        return
    if backend.version == 1:
        assert (backend.root / "cpu.cfs_quota_us").exists()
    else:
        assert "cpu" in (backend.root / "cgroup.controllers").read_text().split()


def test_bandwidth_latency_and_share_parsing() -> None:
    assert constraints.parse_bandwidth("1mbit") == 1_000_000
    assert constraints.parse_bandwidth("2.5Mbit/s") == 2_500_000
    assert constraints.parse_bandwidth("500kbit") == 500_000
    assert constraints.parse_latency("40ms") == 40.0
    assert constraints.parse_latency("0.5s") == 500.0
    assert constraints.parse_latency(3) == 3.0
    with pytest.raises(ValueError, match="bit, kbit, mbit or gbit"):
        constraints.parse_bandwidth("1mbps")
    with pytest.raises(ValueError, match="at least 8kbit"):
        constraints.parse_bandwidth("100bit")
    with pytest.raises(ValueError, match="latency"):
        constraints.parse_latency("-1ms")
    with pytest.raises(ValueError, match="cpu share"):
        DeviceLimits.parse(cpu_share="0")
    with pytest.raises(ValueError, match="cpu share"):
        DeviceLimits.parse(cpu_share="lots")
    lim = DeviceLimits.parse(cpu_share="0.25", uplink="1mbit", latency="20ms")
    assert (lim.cpu_share, lim.uplink, lim.downlink, lim.latency_ms, lim.network) == (
        0.25,
        1_000_000,
        None,
        20.0,
        True,
    )
    assert not DeviceLimits(cpu_share=0.5).network


def test_throttle_off_makes_the_worker_unthrottled_and_refuses_an_assumed_rate() -> None:
    parser = worker_cli.build_parser()
    cfg = worker_cli.config_from_args(
        parser.parse_args(["--server", "h:1", "--throttle", "off", "--profile", "weak"])
    )
    assert (cfg.rate, cfg.profile) == (0.0, "weak")  # the profile stays a label; the release is unthrottled
    cfg = worker_cli.config_from_args(parser.parse_args(["--server", "h:1", "--profile", "weak"]))
    assert cfg.rate is None  # --throttle on (default): drawn from the profile
    with pytest.raises(ValueError, match="--rate 3"):
        worker_cli.config_from_args(
            parser.parse_args(["--server", "h:1", "--throttle", "off", "--rate", "3"])
        )
    with pytest.raises(ValueError, match="coordinates-first"):
        worker_cli.config_from_args(
            parser.parse_args(
                ["--server", "h:1", "--throttle", "off", "--budget-policy", "coordinates-first"]
            )
        )
    with pytest.raises(SystemExit):
        parser.parse_args(["--server", "h:1", "--throttle", "slow"])


def test_round_meter_measures_release_and_compute_rates() -> None:
    m = pacing.RoundMeter(batch_size=32)
    m.on_compute(4096, 8.0)
    m.on_release(4096, 10.0)
    m.on_compute(4096, 8.0)
    m.on_release(8192, 20.0)
    m.on_release(100, 30.0)  # never backwards
    assert m.release_rate == pytest.approx(8192 / 20.0)
    assert m.compute_rate == pytest.approx(8192 / 16.0)
    assert m.lam == pytest.approx(8192 / 16.0 * 32)
    assert m.as_dict()["released"] == 8192
    assert pacing.measured_rate(0, 0.0) == 0.0
    with pytest.raises(ValueError):
        pacing.measured_rate(-1, 1.0)
    rec = {"tau_ms": 200.0, "workers": [{"id": 3, "prefix": 1000}, {"id": 4, "prefix": 0}]}
    assert constraints.delivered_rates(rec) == {3: 5.0, 4: 0.0}
    assert constraints.delivered_rates({"tau_ms": None, "workers": []}) == {}


# ------------------------------------------------------------------ hgo-run integration


def test_limit_table_merges_all_profile_and_fleet_entry_settings() -> None:
    table = constraints.LimitTable.from_flags(
        {"cpu_share": ["0.5", "weak=0.1"], "uplink": ["weak=1mbit"], "latency": ["20ms"]},
        known_profiles=("weak", "average", "powerful"),
    )
    weak = table.limits("weak")
    assert (weak.cpu_share, weak.uplink, weak.latency_ms) == (0.1, 1_000_000, 20.0)
    avg = table.limits("average")
    assert (avg.cpu_share, avg.uplink, avg.latency_ms) == (0.5, None, 20.0)
    own = table.limits("weak", {"cpu_share": 0.05, "downlink": "2mbit", "profile": "weak"})
    assert (own.cpu_share, own.uplink, own.downlink) == (0.05, 1_000_000, 2_000_000)
    assert not constraints.LimitTable().limits("weak").any
    with pytest.raises(ValueError, match="unknown profile 'wek'"):
        constraints.LimitTable.from_flags({"cpu_share": ["wek=0.1"]}, known_profiles=("weak",))
    with pytest.raises(ValueError, match="bandwidth"):
        constraints.LimitTable.from_flags({"uplink": ["weak=fast"]})
    session, device = constraints.split_entry(
        {"name": "w0", "profile": "weak", "cpu_share": 0.1, "latency": 5}
    )
    assert session == {"name": "w0", "profile": "weak"} and device == {"cpu_share": 0.1, "latency": 5}


@pytest.mark.netns
def test_constrain_argv_points_the_worker_at_its_relay_and_wraps_it(lab: Lab) -> None:
    limits = DeviceLimits.parse(cpu_share=0.5, uplink="4mbit", latency="5ms")
    _skip_unless(limits)
    argv = ["hgo-worker", "--server", "127.0.0.1:50999", "--name", "w0"]
    assert constraints.constrain_argv(lab, DeviceLimits(), argv) == argv  # unconstrained: untouched
    out = constraints.constrain_argv(lab, limits, argv, name="w0")
    (dev,) = lab.devices
    assert dev.link is not None and dev.relay is not None and dev.cgroup is not None
    assert out[-5:] == ["hgo-worker", "--server", f"{dev.link.host_ip}:{dev.relay.port}", "--name", "w0"]
    assert out[out.index("--cgroup") + 1] == str(dev.cgroup.path)
    assert out[out.index("--netns") + 1] == dev.link.ns
    with pytest.raises(ValueError, match="own hgo-worker"):
        constraints.constrain_argv(lab, limits, ["hgo-worker", "--server", "h:1", "--fleet", "f.json"])
