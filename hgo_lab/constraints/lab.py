"""The constrained devices of one run: :class:`Device`, :class:`Lab` and what builds on them.

A :class:`Lab` creates devices (a cgroup, a shaped link and a relay, any may be absent),
records them in a state file, starts a reaper that cleans up if the lab's process dies,
and removes everything on close; :func:`check_support` names the first feature this host
lacks; :func:`constrain_argv` turns a worker command line into a constrained device's;
:func:`delivered_rates` reads the rate a device really achieved from a round log (λ
observed, HGO, Boubouh et al., SRDS 2022, §3-§4.2; issue 21, item 3).
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cgroups import CpuGroup, _remove_cgroup, cgroup_backend
from .common import LINK_PREFIX, PREFIX, STATE_DIR, ConstraintError
from .launcher import _libc_setns
from .limits import DeviceLimits
from .network import NetLink, _free_subnet, _ip, _lock, _remove_link, _remove_netns
from .relay import DelayRelay

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
