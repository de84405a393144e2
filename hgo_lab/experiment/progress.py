"""Progress of a scenario run: one line with the share done, the elapsed time and an ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any


class Progress:
    """Progress of a scenario run over its variants x seeds, with an ETA.

    The ETA scales the elapsed time by the rounds still to run (runs of one scenario may
    have different round counts). Runs may be in progress side by side (a process pool):
    the rounds of every run not yet ended count. On a terminal one line is redrawn as
    rounds are reported (``\\r``); otherwise one line per finished run.
    """

    def __init__(self, name: str, total_runs: int, total_rounds: int, echo: Callable[[str], None],
                 stream: IO[str] | None = None) -> None:  # fmt: skip
        self.name, self.total_runs, self.echo = name, total_runs, echo
        self.total_rounds = max(1, total_rounds)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.monotonic()
        self.runs_done = 0
        self.rounds_done = 0
        self._live: dict[str, int] = {}  # rounds done so far by each run not yet ended
        self._ended: set[str] = set()
        self._label = ""

    def start_run(self, label: str) -> None:
        self._label = label
        self._live[label] = 0

    def round_done(self, rec: dict[str, Any] | None = None, *, n: int = 1, run: str | None = None) -> None:
        """``n`` more rounds of ``run`` (default: the run last started) are done."""
        key = self._label if run is None else run
        if key in self._ended:  # a late report from a pool process: the run is already counted
            return
        self._live[key] = self._live.get(key, 0) + n
        if self.tty:
            self.stream.write("\r" + self.line() + " ")
            self.stream.flush()

    def end_run(self, rounds: int, summary: str, label: str | None = None) -> None:
        key = self._label if label is None else label
        self._label = key
        self._live.pop(key, None)
        self._ended.add(key)
        self.runs_done += 1
        self.rounds_done += rounds
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.echo(f"[{self.name}] {summary} | {self.line()}")

    def _done(self) -> int:
        return self.rounds_done + sum(self._live.values())

    def eta_s(self) -> float | None:
        done = self._done()
        if done == 0:
            return None
        elapsed = time.monotonic() - self.t0
        return elapsed * (self.total_rounds - done) / done

    def line(self) -> str:
        done = self._done()
        eta = self.eta_s()
        running = sum(1 for v in self._live.values() if v)
        run = min(self.runs_done + running, self.total_runs)
        return (
            f"run {run}/{self.total_runs}{' ' + self._label if self._label else ''} | "
            f"{100.0 * done / self.total_rounds:.0f}% | "
            f"elapsed {_clock(time.monotonic() - self.t0)} | ETA {'?' if eta is None else _clock(eta)}"
        )


def _clock(seconds: float) -> str:
    m, sec = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
