"""A device's CPU share: a cgroup with a CFS quota (cgroup v1 ``cpu`` or cgroup v2 ``cpu.max``).

:func:`cgroup_backend` finds the hierarchy that can enforce a quota (or raises
:class:`~hgo_lab.constraints.common.ConstraintError` naming what lacks), :class:`CpuGroup`
creates one group and reads its quota and throttling back, and :func:`move_into` puts a
process in it. A slow device's compute rate (HGO, Boubouh et al., SRDS 2022, §3), made
real (issue 21, item 3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .common import CFS_PERIOD_US, MIN_QUOTA_US, ConstraintError, _kill_pids

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
