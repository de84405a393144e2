"""A device's shaped link: a network namespace, a veth pair in a private /30 and tbf qdiscs.

:class:`NetLink` creates the namespace and the pair, shapes the uplink on the device's
end and the downlink on the host's; the helpers around it run ``ip`` (in a namespace or
not), remove namespaces and links, and pick a free /30 of ``10.203.0.0/16`` under a
host-wide lock so two labs never share one. The bandwidth of a device in HGO (Boubouh et
al., SRDS 2022, §3), made real (issue 21, item 3).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .common import STATE_DIR, SUBNET, TBF_LATENCY_MS, ConstraintError, _kill_pids, _run

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
