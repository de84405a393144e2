"""Start real processes for tests: own process group, free ports, guaranteed cleanup.

Every process a test starts goes through ``ProcessGroup.start`` so that it runs in a
new session (its own process group) and is killed, with all its children, when the
test ends — a stray server must never outlive a test run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (for child processes that need one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def console(name: str) -> list[str]:
    """argv prefix for one of our console scripts (hgo-server, hgo-worker, ...)."""
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    module = {
        "hgo-server": "hgo_server.cli",
        "hgo-worker": "hgo_worker.cli",
        "hgo-run": "hgo_lab.cluster",
        "hgo-plot": "hgo_lab.plots",
        "hgo-experiment": "hgo_lab.experiment",
        "hgo-plugins": "hgo_common.catalog",
    }[name]
    return [sys.executable, "-m", module]


class ProcessGroup:
    """Processes started by one test; ``close`` kills every one of their process groups."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1"}
        if env:
            full_env.update(env)
        proc = subprocess.Popen(
            [*prefix, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=full_env,
            start_new_session=True,
        )
        proc.log_path = self.workdir / f"{name}.log"  # type: ignore[attr-defined]
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def wait_log(self, proc: subprocess.Popen[bytes], text: str, timeout: float) -> None:
        """Wait until ``text`` appears in the process's log (AssertionError with the log if not)."""
        deadline = time.monotonic() + timeout
        while text not in self.log(proc):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the log of {proc.args!r}:\n{self.log(proc)[-4000:]}")
            time.sleep(0.1)

    def logs(self, tail: int = 2500) -> str:
        """The end of every process's log, each under its argv (for failure messages)."""
        parts = [f"--- {' '.join(map(str, p.args[:3]))} ...\n{self.log(p)[-tail:]}" for p in self.procs]
        return "\n".join(parts)

    def until(self, pred: Callable[[], object], timeout: float, what: str) -> None:
        """Wait for a condition, not for time: poll ``pred`` until it holds; on timeout an
        AssertionError naming ``what`` with every process's log. Give a generous timeout (a
        bound on a hang, not an expectation): the machine may be loaded."""
        until(pred, timeout, what, self)

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"process {proc.args!r} still running after {timeout}s; log:\n{self.log(proc)[-4000:]}"
            ) from None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if proc.poll() is None:
                proc.wait(timeout=5)


def until(
    pred: Callable[[], object],
    timeout: float,
    what: str,
    procs: ProcessGroup | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``pred`` until it holds (AssertionError naming ``what`` after ``timeout`` seconds,
    with the logs of ``procs`` when given). The way tests wait: for a condition, never for
    a fixed time."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            logs = f"\n{procs.logs()}" if procs is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{logs}")
        time.sleep(interval)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.close()
