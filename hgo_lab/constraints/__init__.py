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

The parts, one concept a module (each imports the ones it needs, never this package):
:mod:`.common` (names, paths, :class:`ConstraintError`, process helpers),
:mod:`.limits` (:class:`DeviceLimits`, its parsers, ``hgo-run``'s per-profile
:class:`LimitTable`), :mod:`.cgroups` (the CPU share), :mod:`.network` (namespace, veth,
tbf), :mod:`.relay` (the latency), :mod:`.launcher` (the ``exec`` launcher),
:mod:`.lab` (:class:`Device`, :class:`Lab`, :func:`constrain_argv`,
:func:`delivered_rates`), :mod:`.cleanup` (leftovers: list, clean, the reaper) and :mod:`.cli`.
Every name the single module had is importable from here as before.
"""

from __future__ import annotations

from .cgroups import CgroupBackend as CgroupBackend
from .cgroups import CpuGroup
from .cgroups import cgroup_backend as cgroup_backend
from .cgroups import move_into as move_into
from .cleanup import Leftovers as Leftovers
from .cleanup import clean, leftovers
from .cli import build_parser as build_parser
from .cli import main as main
from .common import CFS_PERIOD_US as CFS_PERIOD_US
from .common import CGROUP_ROOT as CGROUP_ROOT
from .common import CLONE_NEWNET as CLONE_NEWNET
from .common import LINK_PREFIX as LINK_PREFIX
from .common import MIN_QUOTA_US as MIN_QUOTA_US
from .common import PREFIX, ConstraintError
from .common import RELAY_BUFFER as RELAY_BUFFER
from .common import RELAY_READ as RELAY_READ
from .common import STATE_DIR as STATE_DIR
from .common import SUBNET as SUBNET
from .common import TBF_LATENCY_MS as TBF_LATENCY_MS
from .common import _pid_alive as _pid_alive
from .lab import Device, Lab, check_support, constrain_argv, delivered_rates
from .launcher import enter_netns as enter_netns
from .limits import LIMIT_KEYS as LIMIT_KEYS
from .limits import DeviceLimits, LimitTable, add_run_flags, parse_bandwidth, parse_latency
from .limits import split_entry as split_entry
from .network import NetLink
from .relay import DelayRelay

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
