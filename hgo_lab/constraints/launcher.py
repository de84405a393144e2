"""The exec launcher: enter a device's cgroup and network namespace, then ``exec`` the worker.

``python -m hgo_lab.constraints exec --cgroup PATH --netns NAME -- ARGV`` ends in
:func:`_exec`: the process writes its own pid to the cgroup, enters the namespace with
setns(2) (through ctypes: no third-party module) and replaces itself with the worker, so
the worker and all it starts are constrained from their first instruction (issue 21,
item 3; HGO, Boubouh et al., SRDS 2022, §3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cgroups import move_into
from .common import CLONE_NEWNET, ConstraintError

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
