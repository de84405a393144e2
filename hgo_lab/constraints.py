"""Real device constraints for the lab: a CPU share, a shaped link and a latency per device.

HGO (Boubouh et al., SRDS 2022, §3-§4.2) is about devices that *are* slow: worker i
delivers the prefix of C_k it can compute and send by τ. ``hgo_worker.pacing`` emulates
that from a rate model; this module makes it real on one Linux machine (issue 21, item 3):

* **CPU share** — a cgroup per device with a CFS quota: cgroup v1 (``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` under the ``cpu`` hierarchy) or cgroup v2 (``cpu.max``). ``share``
  is a fraction of *one* CPU, as Docker's ``--cpus`` (0.1 = 10 % of a core). The worker
  process joins the group before it runs any of its own code: it is started through
  ``python -m hgo_lab.constraints exec``, which writes its own pid to ``cgroup.procs``,
  enters the device's network namespace and then ``exec``s the worker (same pid, so
  everything the worker starts is in the group too).
* **Bandwidth** — a network namespace per device with a veth pair to the host, addresses
  in a private /30 of ``10.203.0.0/16`` picked per device, and a ``tbf`` qdisc on both
  ends: the device end shapes the uplink (device → server), the host end the downlink.
* **Latency** — the kernel here has no ``netem``, so latency is *application-level*: a
  TCP delay relay on the host side of the veth (:class:`DelayRelay`) holds every piece of
  data it forwards for ``latency_ms`` in each direction (one way; the round trip gains
  twice that). The worker dials the relay (``Device.server_address``); the relay dials the
  server on loopback, so the server never listens beyond 127.0.0.1. The relay
  acknowledges TCP data at once, so it adds propagation delay, not a window limit.

What is *not* emulated here: the gradient computation runs at whatever speed the cgroup
leaves the process (``hgo-worker --throttle off`` releases it as it is computed), and the
bytes cross a real shaped queue. What remains emulated: the latency (a user-space delay
line, not a kernel one), and the devices all share the machine's memory bandwidth and caches.

Everything created (cgroups, namespaces, veth pairs, qdiscs) is recorded in a state file
under ``/run/hgo-dev`` and removed by :meth:`Lab.close` (a context manager, also run at
exit). A *reaper* process, started with the lab in its own session, cleans what the state
file lists as soon as the lab's process dies (even by SIGKILL: it waits for the end of a
pipe only the lab holds). ``python -m hgo_lab.constraints list|clean`` shows and removes
leftovers (names start with ``hgo-dev-``, or ``hgd`` for links). Where the kernel or the
privileges lack a feature, :func:`check_support` and :class:`Lab` raise
:class:`ConstraintError` naming it; nothing falls back to emulation silently.

Only stdlib imports: the ``exec`` launcher runs this module before every constrained
worker, and must start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgo_common.errors import HGOError

__all__ = [
    "PREFIX",
    "ConstraintError",
    "CpuGroup",
    "DelayRelay",
    "Device",
    "DeviceLimits",
    "Lab",
    "LimitTable",
    "NetLink",
    "add_run_flags",
    "check_support",
    "clean",
    "constrain_argv",
    "delivered_rates",
    "leftovers",
    "parse_bandwidth",
    "parse_latency",
]

PREFIX = "hgo-dev-"  # cgroups, namespaces and state files; other tests' "hgo-" names are not ours
LINK_PREFIX = "hgd"  # veth names (15 characters at most: hgd + 7 hex pid + 3 hex index + h|d)
SUBNET = ipaddress.IPv4Network("10.203.0.0/16")  # device /30s are carved from here
STATE_DIR = Path(os.environ.get("HGO_DEV_STATE_DIR", "/run/hgo-dev"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel's floor for cfs_quota_us / cpu.max
TBF_LATENCY_MS = 200  # tbf queue: at most this much data waits (then drops, as on a thin link)
CLONE_NEWNET = 0x40000000
RELAY_READ = 64 * 1024
RELAY_BUFFER = 256  # pieces a relay direction may hold (x 64 KiB) before it stops reading


class ConstraintError(HGOError, RuntimeError):
    """The kernel or the privileges lack a feature a constraint needs (the message names it)."""


# ---------------------------------------------------------------------------------- settings

_BANDWIDTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)(?:/s)?\s*$", re.IGNORECASE)
_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}


def parse_bandwidth(text: str | int | float) -> int:
    """Bits per second from ``1mbit``, ``500kbit``, ``2.5Mbit/s``, ``8000bit`` (tc's units).

    Byte units are refused on purpose: tc reads ``mbps`` as megabytes per second, a
    factor-of-8 trap.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        bits = float(text)
    else:
        m = _BANDWIDTH.match(str(text))
        if m is None:
            raise ValueError(
                f"bandwidth must be a number with a unit bit, kbit, mbit or gbit (e.g. 1mbit), got {text!r}"
            )
        bits = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(bits) or bits < 8_000:
        raise ValueError(f"bandwidth must be at least 8kbit (tbf cannot shape slower), got {text!r}")
    return int(bits)


def parse_latency(text: str | int | float) -> float:
    """One-way latency in ms from ``40``, ``40ms`` or ``0.04s`` (>= 0)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        ms = float(text)
    else:
        s = str(text).strip().lower()
        scale = 1.0
        if s.endswith("ms"):
            s = s[:-2]
        elif s.endswith("s"):
            s, scale = s[:-1], 1000.0
        try:
            ms = float(s) * scale
        except ValueError:
            raise ValueError(f"latency must be milliseconds (40, 40ms or 0.04s), got {text!r}") from None
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"latency must be a finite number of ms >= 0, got {text!r}")
    return ms


@dataclass(frozen=True)
class DeviceLimits:
    """The constraints of one device. ``None`` / 0 leaves that resource unconstrained.

    Attributes
    ----------
    cpu_share : float or None
        Fraction of one CPU (0.1 = 10 % of a core; up to the number of CPUs).
    uplink, downlink : int or None
        Bits per second, device → server and server → device.
    latency_ms : float
        One-way delay added in each direction (application-level relay, see the module doc).
    """

    cpu_share: float | None = None
    uplink: int | None = None
    downlink: int | None = None
    latency_ms: float = 0.0

    def __post_init__(self) -> None:
        ncpu = os.cpu_count() or 1
        share = self.cpu_share
        if share is not None and not (0 < share <= ncpu and math.isfinite(share)):
            raise ValueError(f"cpu share must be in (0, {ncpu}] (a fraction of one CPU), got {share}")
        for name in ("uplink", "downlink"):
            value = getattr(self, name)
            if value is not None and value < 8_000:
                raise ValueError(f"{name} must be at least 8000 bit/s, got {value}")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency must be a finite number of ms >= 0, got {self.latency_ms}")

    @classmethod
    def parse(
        cls,
        cpu_share: str | float | None = None,
        uplink: str | int | None = None,
        downlink: str | int | None = None,
        latency: str | float | None = None,
    ) -> DeviceLimits:
        """From user text (``--cpu-share 0.1 --uplink 1mbit --latency 40ms``)."""
        share: float | None = None
        if cpu_share is not None:
            try:
                share = float(cpu_share)
            except ValueError:
                raise ValueError(
                    f"cpu share must be a fraction of one CPU (e.g. 0.1), got {cpu_share!r}"
                ) from None
        return cls(
            cpu_share=share,
            uplink=None if uplink is None else parse_bandwidth(uplink),
            downlink=None if downlink is None else parse_bandwidth(downlink),
            latency_ms=0.0 if latency is None else parse_latency(latency),
        )

    @property
    def network(self) -> bool:
        """True when the device needs its own namespace (any link constraint)."""
        return self.uplink is not None or self.downlink is not None or self.latency_ms > 0

    @property
    def any(self) -> bool:
        return self.cpu_share is not None or self.network


# ---------------------------------------------------------------------------------- helpers


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise ConstraintError(f"{' '.join(argv)!r} failed: {(res.stderr or res.stdout).strip()}")
    return res


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet waited for, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _owner_of(name: str) -> int | None:
    """The pid of the lab that created ``hgo-dev-<pid>-<i>`` (or a link ``hgd<pid:7x><i:3x>[hd]``)."""
    m = re.match(rf"^{re.escape(PREFIX)}(\d+)-\d+$", name)
    if m:
        return int(m.group(1))
    m = re.match(rf"^{LINK_PREFIX}([0-9a-f]{{7}})[0-9a-f]{{3}}[hd]$", name)
    return int(m.group(1), 16) if m else None


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------- cgroups


@dataclass(frozen=True)
class CgroupBackend:
    """Where CPU quotas live: cgroup v1's ``cpu`` hierarchy or a cgroup v2 mount with ``cpu``."""

    version: int
    root: Path


def _mounts() -> list[tuple[str, Path, str, str]]:
    out = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4:
                out.append((parts[0], Path(parts[1]), parts[2], parts[3]))
    return out


def cgroup_backend() -> CgroupBackend:
    """The cgroup hierarchy that can enforce a CPU quota, or ConstraintError naming what lacks."""
    v2_roots: list[Path] = []
    for _src, path, fstype, opts in _mounts():
        if fstype == "cgroup" and "cpu" in opts.split(",") and (path / "cpu.cfs_quota_us").exists():
            if not os.access(path, os.W_OK):
                raise ConstraintError(
                    f"a CPU share needs write access to the cgroup v1 'cpu' hierarchy {path} (root)"
                )
            return CgroupBackend(1, path)
        if fstype == "cgroup2":
            v2_roots.append(path)
    notes = []
    for root in v2_roots:
        ctl = root / "cgroup.controllers"
        controllers = ctl.read_text().split() if ctl.exists() else []
        if "cpu" in controllers:
            if not os.access(root, os.W_OK):
                raise ConstraintError(
                    f"a CPU share needs write access to the cgroup v2 hierarchy {root} (root)"
                )
            return CgroupBackend(2, root)
        notes.append(f"the cgroup v2 hierarchy at {root} does not offer the 'cpu' controller "
                     f"(cgroup.controllers: {' '.join(controllers) or 'none'})")  # fmt: skip
    raise ConstraintError(
        "a CPU share needs the cgroup 'cpu' controller: no cgroup v1 'cpu' hierarchy is mounted"
        + ("; " + "; ".join(notes) if notes else " and no cgroup v2 hierarchy either")
    )


@dataclass
class CpuGroup:
    """One device's CPU cgroup with a CFS quota of ``share`` CPUs."""

    backend: CgroupBackend
    name: str
    share: float

    @property
    def path(self) -> Path:
        return self.backend.root / self.name

    def create(self) -> None:
        quota = max(MIN_QUOTA_US, round(self.share * CFS_PERIOD_US))
        if self.backend.version == 2:
            ctl = self.backend.root / "cgroup.subtree_control"
            if "cpu" not in ctl.read_text().split():
                try:
                    ctl.write_text("+cpu")
                except OSError as exc:
                    raise ConstraintError(
                        f"cannot enable the cgroup v2 'cpu' controller in {ctl}: {exc}"
                    ) from exc
        try:
            self.path.mkdir()
        except OSError as exc:
            raise ConstraintError(f"cannot create the cgroup {self.path}: {exc}") from exc
        if self.backend.version == 1:
            (self.path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")

    def quota(self) -> tuple[int, int]:
        """(quota_us, period_us) as the kernel holds them."""
        if self.backend.version == 1:
            q = int((self.path / "cpu.cfs_quota_us").read_text())
            return q, int((self.path / "cpu.cfs_period_us").read_text())
        q_text, p_text = (self.path / "cpu.max").read_text().split()
        return (-1 if q_text == "max" else int(q_text)), int(p_text)

    def pids(self) -> list[int]:
        return _cgroup_pids(self.path)

    def throttled(self) -> int:
        """How many CFS periods the quota throttled the group (``nr_throttled`` in cpu.stat)."""
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "nr_throttled":
                    return int(value)
        return 0

    def remove(self) -> None:
        _remove_cgroup(self.path)


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _remove_cgroup(path: Path, timeout_s: float = 10.0) -> None:
    """Kill what is still inside (processes we started), then rmdir."""
    deadline = time.monotonic() + timeout_s
    while path.exists():
        _kill_pids(_cgroup_pids(path))
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise ConstraintError(f"cannot remove the cgroup {path}: {exc}") from exc
            time.sleep(0.05)


def move_into(cgroup: Path, pid: int | None = None) -> None:
    """Put ``pid`` (default: this process) into the cgroup at ``cgroup``."""
    try:
        (cgroup / "cgroup.procs").write_text(str(pid or os.getpid()))
    except OSError as exc:
        raise ConstraintError(f"cannot move pid {pid or os.getpid()} into {cgroup}: {exc}") from exc


# ---------------------------------------------------------------------------------- network


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", "netns", "exec", ns, *argv], check=check)


def _tbf(bits: int) -> list[str]:
    # burst: at least one 10 ms slice of the rate and a few full-size frames (tbf needs a
    # burst of at least one MTU; GSO super-packets larger than it are segmented by tbf).
    burst = max(4096, bits // 8 // 100)
    return ["tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms"]


@dataclass
class NetLink:
    """A device's network namespace and veth pair; the /30 is ``net``: host .1, device .2."""

    ns: str
    host_if: str
    dev_if: str
    net: ipaddress.IPv4Network
    uplink: int | None = None
    downlink: int | None = None

    @property
    def host_ip(self) -> str:
        return str(self.net.network_address + 1)

    @property
    def dev_ip(self) -> str:
        return str(self.net.network_address + 2)

    def create(self) -> None:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.dev_if)
        _ip("link", "set", self.dev_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _in_ns(self.ns, "ip", "addr", "add", f"{self.dev_ip}/30", "dev", self.dev_if)
        _in_ns(self.ns, "ip", "link", "set", self.dev_if, "up")
        _in_ns(self.ns, "ip", "link", "set", "lo", "up")
        if self.downlink is not None:
            _run(["tc", "qdisc", "add", "dev", self.host_if, "root", *_tbf(self.downlink)])
        if self.uplink is not None:
            _in_ns(self.ns, "tc", "qdisc", "add", "dev", self.dev_if, "root", *_tbf(self.uplink))

    def qdiscs(self) -> dict[str, str]:
        """``tc qdisc show`` of both ends (host, device)."""
        return {
            "host": _run(["tc", "qdisc", "show", "dev", self.host_if], check=False).stdout.strip(),
            "device": _in_ns(self.ns, "tc", "qdisc", "show", "dev", self.dev_if, check=False).stdout.strip(),
        }

    def remove(self) -> None:
        _remove_netns(self.ns)
        _remove_link(self.host_if)


def _remove_netns(ns: str) -> None:
    if not Path("/run/netns", ns).exists() and ns not in _ip("netns", "list", check=False).stdout.split():
        return
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    _kill_pids([int(p) for p in pids if p.isdigit()])
    # Deleting the namespace destroys the veth end inside it and with it the pair and the qdiscs.
    _ip("netns", "del", ns, check=False)


def _remove_link(name: str) -> None:
    if _ip("link", "show", name, check=False).returncode == 0:
        _ip("link", "del", name, check=False)


def _host_addresses() -> str:
    return _ip("-o", "-4", "addr", check=False).stdout


def _free_subnet(taken: set[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    used = _host_addresses()
    for net in SUBNET.subnets(new_prefix=30):
        if net in taken or f" {net.network_address + 1}/" in used or f" {net.network_address + 2}/" in used:
            continue
        return net
    raise ConstraintError(f"no free /30 left in {SUBNET} for a device link")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise subnet choice among labs on this host (two labs must not pick one /30)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with (STATE_DIR / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------- latency


class DelayRelay:
    """A TCP relay that holds each piece of data ``delay_ms`` in each direction.

    The stand-in for ``netem delay`` (unavailable in this kernel): it listens on
    ``listen`` (the host end of a device's veth) and forwards to ``target``. It runs on an
    asyncio loop in a daemon thread of the lab's process, so it never outlives the lab.
    Order is kept; a direction holding ``RELAY_BUFFER`` pieces stops reading until it
    drains, so a slow consumer slows the producer as TCP would.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_ms: float) -> None:
        self.listen = listen
        self.target = target
        self.delay_s = delay_ms / 1000.0
        self.port = 0
        self.bytes = {"up": 0, "down": 0}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._main, name=f"hgo-relay-{listen[0]}", daemon=True)

    def start(self) -> DelayRelay:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ConstraintError(f"cannot start the delay relay on {self.listen}: {self._error}")
        if not self.port:
            raise ConstraintError(f"the delay relay on {self.listen} did not start")
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, self.listen[0], self.listen[1])
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_w, "up")),
            asyncio.create_task(self._pump(up_r, writer, "down")),
        ]
        try:
            # Each direction ends on its own EOF (half-close is forwarded); a reset in one
            # ends both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in pumps:
                t.cancel()
            for w in (writer, up_w):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(RELAY_BUFFER)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                    return
                wait = due - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                self.bytes[key] += len(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await src.read(RELAY_READ)
                await queue.put((self._loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_later(0.05, self._loop.stop)

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)


# ---------------------------------------------------------------------------------- devices


@dataclass
class Device:
    """One constrained device of a :class:`Lab`: its cgroup, link and relay (any may be absent)."""

    name: str
    limits: DeviceLimits
    cgroup: CpuGroup | None = None
    link: NetLink | None = None
    relay: DelayRelay | None = None
    _server_port: int | None = None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this device: the exec launcher in front (cgroup, namespace)."""
        if self.cgroup is None and self.link is None:
            return list(argv)
        pre = [sys.executable, "-m", "hgo_lab.constraints", "exec"]
        if self.cgroup is not None:
            pre += ["--cgroup", str(self.cgroup.path)]
        if self.link is not None:
            pre += ["--netns", self.link.ns]
        return [*pre, "--", *argv]

    def server_address(self, server_host: str, server_port: int) -> str:
        """The ``HOST:PORT`` the device's worker dials to reach the server at ``server_host:server_port``.

        With a link: the relay on the host end of the veth (started on first call, then
        reused for that port); without: the server itself.
        """
        if self.link is None:
            return f"{server_host}:{server_port}"
        if self.relay is None:
            relay = DelayRelay((self.link.host_ip, 0), (server_host, server_port), self.limits.latency_ms)
            self.relay = relay.start()
            self._server_port = server_port
        elif self._server_port != server_port:
            raise ValueError(
                f"device {self.name} already relays to port {self._server_port}, not {server_port}"
            )
        return f"{self.link.host_ip}:{self.relay.port}"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.cgroup is not None:
            out["cgroup"] = str(self.cgroup.path)
            out["cpu_share"] = self.cgroup.share
        if self.link is not None:
            out.update(netns=self.link.ns, host_if=self.link.host_if, dev_if=self.link.dev_if,
                       host_ip=self.link.host_ip, dev_ip=self.link.dev_ip, uplink=self.link.uplink,
                       downlink=self.link.downlink)  # fmt: skip
        out["latency_ms"] = self.limits.latency_ms
        return out


def check_support(limits: DeviceLimits) -> None:
    """Raise ConstraintError naming the first missing feature ``limits`` needs."""
    if not limits.any:
        return
    if os.geteuid() != 0:
        raise ConstraintError("device constraints (cgroups, network namespaces, tc) need root")
    if limits.cpu_share is not None:
        cgroup_backend()
    if limits.network:
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise ConstraintError(f"a shaped link needs the '{tool}' command (iproute2)")
        res = _ip("netns", "list", check=False)
        if res.returncode != 0:
            raise ConstraintError(
                f"a shaped link needs network namespaces: 'ip netns' failed: {res.stderr.strip()}"
            )
        if _libc_setns() is None:
            raise ConstraintError("entering a network namespace needs setns(2) in the C library")


class Lab:
    """The constrained devices of one run; removes everything it created on close.

    Use as a context manager::

        with Lab() as lab:
            dev = lab.device(DeviceLimits.parse(cpu_share=0.1, uplink="1mbit"))
            argv = dev.wrap(["hgo-worker", "--server", dev.server_address("127.0.0.1", port)])

    Creation is all or nothing per device: a failure removes what the device had made.
    """

    def __init__(self, *, reaper: bool = True) -> None:
        self.owner = os.getpid()
        self.devices: list[Device] = []
        self._count = 0
        self._closed = False
        self._subnets: set[ipaddress.IPv4Network] = set()
        try:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConstraintError(
                f"a lab records what it creates in {STATE_DIR}, which it cannot create: "
                f"{exc.strerror or exc} (root, or set HGO_DEV_STATE_DIR)"
            ) from exc
        self.state_file = STATE_DIR / f"{PREFIX}{self.owner}-{id(self):x}.json"
        self._reaper: subprocess.Popen[bytes] | None = None
        self._pipe_w: int | None = None
        self._save()
        if reaper:
            self._start_reaper()
        atexit.register(self.close)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_reaper(self) -> None:
        r, w = os.pipe()  # both non-inheritable: only the reaper gets r (pass_fds)
        self._reaper = subprocess.Popen(
            [sys.executable, "-m", "hgo_lab.constraints", "reaper", "--state", str(self.state_file),
             "--fd", str(r)],
            pass_fds=(r,), start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(r)
        self._pipe_w = w

    def _save(self) -> None:
        state = {"owner": self.owner, "devices": [d.describe() for d in self.devices]}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def device(self, limits: DeviceLimits, name: str | None = None) -> Device:
        """A new device with ``limits`` (ConstraintError naming what this host lacks)."""
        if self._closed:
            raise RuntimeError("this Lab is closed")
        check_support(limits)
        i = self._count
        self._count += 1
        tag = f"{PREFIX}{self.owner}-{i}"
        dev = Device(name or tag, limits)
        self.devices.append(dev)  # before creating anything: close() removes partial devices too
        try:
            if limits.cpu_share is not None:
                dev.cgroup = CpuGroup(cgroup_backend(), tag, limits.cpu_share)
                self._save()
                dev.cgroup.create()
            if limits.network:
                link_id = f"{LINK_PREFIX}{self.owner:07x}{i:03x}"
                with _lock():
                    net = _free_subnet(self._subnets)
                    self._subnets.add(net)
                    dev.link = NetLink(tag, link_id + "h", link_id + "d", net, limits.uplink, limits.downlink)
                    self._save()
                    dev.link.create()
            self._save()
        except BaseException:
            _remove_device(dev.describe())
            self.devices.remove(dev)
            self._save()
            raise
        return dev

    def close(self) -> None:
        """Stop relays, remove every cgroup, namespace and link; idempotent."""
        if self._closed or os.getpid() != self.owner:
            return
        self._closed = True
        errors = []
        for dev in self.devices:
            if dev.relay is not None:
                dev.relay.close()
            try:
                _remove_device(dev.describe())
            except ConstraintError as exc:
                errors.append(str(exc))
        self.devices = []
        with contextlib.suppress(OSError):
            self.state_file.unlink()
        if self._pipe_w is not None:
            os.close(self._pipe_w)  # the reaper sees EOF, finds no state file, exits
            self._pipe_w = None
        if self._reaper is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._reaper.wait(5)
        atexit.unregister(self.close)
        if errors:
            raise ConstraintError("; ".join(errors))


def _remove_device(desc: Mapping[str, Any]) -> None:
    """Remove what a device description names (used by Lab.close, the reaper and clean)."""
    if "netns" in desc:
        _remove_netns(str(desc["netns"]))
        _remove_link(str(desc["host_if"]))
    if "cgroup" in desc:
        _remove_cgroup(Path(desc["cgroup"]))


# ---------------------------------------------------------------------------------- leftovers


@dataclass
class Leftovers:
    """What constrained runs left on this host (``hgo-dev-`` cgroups and namespaces, links)."""

    cgroups: list[Path] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    state_files: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.cgroups or self.namespaces or self.links or self.state_files)

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "cgroups": [str(p) for p in self.cgroups],
            "namespaces": self.namespaces,
            "links": self.links,
            "state_files": [str(p) for p in self.state_files],
        }


def _cgroup_roots() -> list[Path]:
    roots = []
    for _src, path, fstype, opts in _mounts():
        if (fstype == "cgroup" and "cpu" in opts.split(",")) or fstype == "cgroup2":
            roots.append(path)
    return roots


def leftovers(*, include_live: bool = False) -> Leftovers:
    """``hgo-dev-`` cgroups, namespaces, ``hgd`` links and state files; by default only those
    whose creating process is gone (a live lab's devices are not leftovers)."""

    def keep(name: str) -> bool:
        owner = _owner_of(name)
        return include_live or owner is None or not _pid_alive(owner)

    out = Leftovers()
    for root in _cgroup_roots():
        with contextlib.suppress(OSError):
            out.cgroups += sorted(
                p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and keep(p.name)
            )
    if shutil.which("ip"):
        for line in _ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(PREFIX) and keep(name):
                out.namespaces.append(name)
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
            m = re.match(r"^\d+:\s+([^:@\s]+)", line)
            name = m.group(1) if m else ""
            if name.startswith(LINK_PREFIX) and _owner_of(name) is not None and keep(name):
                out.links.append(name)
    if STATE_DIR.is_dir():
        for p in sorted(STATE_DIR.glob(f"{PREFIX}*.json")):
            m = re.match(rf"^{re.escape(PREFIX)}(\d+)-", p.name)
            if m and (include_live or not _pid_alive(int(m.group(1)))):
                out.state_files.append(p)
    return out


def clean(*, include_live: bool = False) -> Leftovers:
    """Remove the leftovers (:func:`leftovers`); returns what was found."""
    found = leftovers(include_live=include_live)
    for ns in found.namespaces:
        _remove_netns(ns)
    for link in found.links:
        _remove_link(link)
    for cg in found.cgroups:
        _remove_cgroup(cg)
    for p in found.state_files:
        with contextlib.suppress(OSError):
            p.unlink()
    return found


def _reap(state_file: Path, fd: int) -> None:
    """Block until the lab's end of the pipe closes (it exited or died), then clean its state."""
    with contextlib.suppress(OSError):
        while os.read(fd, 4096):
            pass
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return  # a clean close removed the state file
    for desc in state.get("devices", []):
        with contextlib.suppress(ConstraintError, OSError):
            _remove_device(desc)
    with contextlib.suppress(OSError):
        state_file.unlink()


# ---------------------------------------------------------------------------------- exec


def _libc_setns() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    return getattr(libc, "setns", None)


def enter_netns(ns: str) -> None:
    """Move this process into the named network namespace (``/run/netns/NAME``)."""
    setns = _libc_setns()
    if setns is None:
        raise ConstraintError("entering a network namespace needs setns(2) in the C library")
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise ConstraintError(f"setns into the network namespace {ns!r} failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def _exec(cgroup: Path | None, netns: str | None, argv: Sequence[str]) -> None:
    if not argv:
        raise ConstraintError("exec needs a command after --")
    if cgroup is not None:
        move_into(cgroup)
    if netns is not None:
        enter_netns(netns)
    os.execvp(argv[0], list(argv))


# ---------------------------------------------------------------------------------- rates


def delivered_rates(record: Mapping[str, Any]) -> dict[int, float]:
    """Coordinates per ms each sampled worker delivered in one round-log record.

    ``prefix / tau_ms``: the rate a device *really* achieved by the deadline, compute and
    link together (λ observed rather than assumed). A worker that delivered all d before τ
    did at least this well. Empty for τ = ∞ (no deadline to divide by).
    """
    tau = record.get("tau_ms")
    if not tau:
        return {}
    return {int(w["id"]): float(w["prefix"]) / float(tau) for w in record.get("workers", [])}


# ---------------------------------------------------------------------------------- hgo-run

#: The per-device settings of ``hgo-run`` (flags ``--cpu-share``, ``--uplink``, ``--downlink``,
#: ``--latency``) and of ``--fleet`` JSON entries (keys with underscores).
LIMIT_KEYS = ("cpu_share", "uplink", "downlink", "latency")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The device flags of ``hgo-run``: each ``[PROFILE=]VALUE``, repeatable (no profile: all)."""
    helps = {
        "cpu_share": "CPU share of a device, a fraction of one core (0.1 = 10 %%): a cgroup quota",
        "uplink": "device -> server bandwidth, e.g. 1mbit: tbf on the device's veth",
        "downlink": "server -> device bandwidth, e.g. 10mbit: tbf on the host's veth",
        "latency": "one-way latency added each way, e.g. 40ms (application-level relay: no netem here)",
    }
    for key in LIMIT_KEYS:
        parser.add_argument(
            "--" + key.replace("_", "-"), action="append", default=[], metavar="[PROFILE=]VALUE",
            help=helps[key] + "; repeatable, e.g. weak=0.1 (default: unconstrained; needs root)",
        )  # fmt: skip


@dataclass(frozen=True)
class LimitTable:
    """Device limits per profile, from ``hgo-run``'s flags; ``"*"`` applies to every profile."""

    by_profile: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def from_flags(
        cls, values: Mapping[str, Sequence[str]], known_profiles: Sequence[str] = ()
    ) -> LimitTable:
        """``{"cpu_share": ["weak=0.1", "0.5"], ...}`` -> table (ValueError naming a bad item)."""
        table: dict[str, dict[str, str]] = {}
        for key, items in values.items():
            if key not in LIMIT_KEYS:
                raise ValueError(f"unknown device setting {key!r}; expected one of {list(LIMIT_KEYS)}")
            for item in items:
                prof, sep, value = item.rpartition("=")
                prof = prof if sep else "*"
                if known_profiles and prof != "*" and prof not in known_profiles:
                    raise ValueError(
                        f"--{key.replace('_', '-')} {item!r}: unknown profile {prof!r}; "
                        f"expected one of {sorted(known_profiles)}"
                    )
                table.setdefault(prof, {})[key] = value
        out = cls(table)
        for prof in table:
            out.limits(prof)  # validates every value now, before anything starts
        return out

    def limits(self, profile: str, entry: Mapping[str, Any] | None = None) -> DeviceLimits:
        """The limits of one device: ``"*"``, then its profile's, then its fleet entry's own keys."""
        merged: dict[str, Any] = {**self.by_profile.get("*", {}), **self.by_profile.get(profile, {})}
        if entry:
            merged.update({k: entry[k] for k in LIMIT_KEYS if entry.get(k) is not None})
        return DeviceLimits.parse(
            merged.get("cpu_share"), merged.get("uplink"), merged.get("downlink"), merged.get("latency")
        )

    def any(self) -> bool:
        return bool(self.by_profile)


def split_entry(entry: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``--fleet`` entry -> (the hgo-worker session keys, the device keys of :data:`LIMIT_KEYS`)."""
    session = {k: v for k, v in entry.items() if k not in LIMIT_KEYS}
    device = {k: entry[k] for k in LIMIT_KEYS if k in entry}
    return session, device


def constrain_argv(
    lab: Lab, limits: DeviceLimits, argv: Sequence[str], *, name: str | None = None
) -> list[str]:
    """A worker command line run as a device with ``limits`` (unchanged when unconstrained).

    Creates the device in ``lab``, points ``--server HOST:PORT`` at the device's relay when
    it has a link, and puts the exec launcher in front. One device is one process: a
    ``--fleet`` process hosting several sessions cannot be given per-session limits.
    """
    if not limits.any:
        return list(argv)
    out = list(argv)
    if "--fleet" in out or "--sessions" in out:
        raise ValueError("device limits apply to a process: give each constrained device its own hgo-worker")
    dev = lab.device(limits, name=name)
    if dev.link is not None:
        try:
            i = out.index("--server")
        except ValueError:
            raise ValueError("a worker command with a link constraint needs --server HOST:PORT") from None
        host, _, port = out[i + 1].rpartition(":")
        out[i + 1] = dev.server_address(host, int(port))
    return dev.wrap(out)


# ---------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hgo_lab.constraints",
        description="Real device constraints for HGO lab runs (CPU share, shaped link, latency).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("exec", help="run a command inside a device's cgroup and network namespace")
    ex.add_argument("--cgroup", type=Path, default=None)
    ex.add_argument("--netns", default=None)
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    ls = sub.add_parser("list", help="show leftovers (JSON)")
    ls.add_argument("--all", action="store_true", help="include the devices of labs still running")
    cl = sub.add_parser("clean", help="remove leftovers")
    cl.add_argument("--all", action="store_true", help="also the devices of labs still running")
    ck = sub.add_parser("check", help="say whether this host can apply the given constraints")
    ck.add_argument("--cpu-share", default=None)
    ck.add_argument("--uplink", default=None)
    ck.add_argument("--downlink", default=None)
    ck.add_argument("--latency", default=None)
    rp = sub.add_parser("reaper", help=argparse.SUPPRESS)
    rp.add_argument("--state", type=Path, required=True)
    rp.add_argument("--fd", type=int, required=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "exec":
            cmd = list(args.argv)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            _exec(args.cgroup, args.netns, cmd)
        elif args.cmd == "list":
            print(json.dumps(leftovers(include_live=args.all).as_dict(), indent=2))
        elif args.cmd == "clean":
            print(json.dumps(clean(include_live=args.all).as_dict(), indent=2))
        elif args.cmd == "check":
            check_support(DeviceLimits.parse(args.cpu_share, args.uplink, args.downlink, args.latency))
            print("ok")
        elif args.cmd == "reaper":
            _reap(args.state, args.fd)
    except (ConstraintError, ValueError, OSError) as exc:
        print(f"hgo_lab.constraints: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
