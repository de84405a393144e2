"""The shared ground of :mod:`hgo_lab.constraints`: names, paths and small system helpers.

The constants every part uses (the ``hgo-dev-`` / ``hgd`` name prefixes that make
leftovers recognisable, the state directory, the CFS period, the tbf queue bound, the
relay's buffer sizes), :class:`ConstraintError`, and helpers to run a command, tell
whether a lab's process still runs, read the lab pid out of a name and kill processes.
Issue 21, item 3 (real devices for HGO, Boubouh et al., SRDS 2022, §3-§4.2).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hgo_common.errors import HGOError

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
