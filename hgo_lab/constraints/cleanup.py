"""What constrained runs left behind, and the reaper that prevents it.

:func:`leftovers` lists the ``hgo-dev-`` cgroups and namespaces, ``hgd`` links and state
files whose lab is gone, :func:`clean` removes them, and :func:`_reap` (the
``reaper`` subcommand a :class:`~hgo_lab.constraints.lab.Lab` starts in its own session)
removes what a lab's state file lists once the lab's process has ended, even by SIGKILL
(issue 21, item 3).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import _mounts, _remove_cgroup
from .common import LINK_PREFIX, PREFIX, STATE_DIR, ConstraintError, _owner_of, _pid_alive
from .lab import _remove_device
from .network import _ip, _remove_link, _remove_netns

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
