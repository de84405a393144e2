"""Progress of a scenario run: one line with the share done, the elapsed time and an ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any


class Progress:
    """Progress of a scenario run over its variants x seeds, with an ETA.

    The ETA scales the elapsed time by the rounds still to run (runs of one scenario may
    have different round counts). On a terminal one line is redrawn every round (``\\r``);
    otherwise one line per finished run.
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
        self._in_run = 0
        self._label = ""

    def start_run(self, label: str) -> None:
        self._label, self._in_run = label, 0

    def round_done(self, rec: dict[str, Any]) -> None:
        self._in_run += 1
        if self.tty:
            self.stream.write("\r" + self.line() + " ")
            self.stream.flush()

    def end_run(self, rounds: int, summary: str, label: str | None = None) -> None:
        if label is not None:  # runs in parallel end without having started here
            self._label = label
        self.runs_done += 1
        self.rounds_done += rounds
        self._in_run = 0
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.echo(f"[{self.name}] {summary} | {self.line()}")

    def eta_s(self) -> float | None:
        done = self.rounds_done + self._in_run
        if done == 0:
            return None
        elapsed = time.monotonic() - self.t0
        return elapsed * (self.total_rounds - done) / done

    def line(self) -> str:
        done = self.rounds_done + self._in_run
        eta = self.eta_s()
        run = min(self.runs_done + (1 if self._in_run else 0), self.total_runs)
        return (
            f"run {run}/{self.total_runs} {self._label} | {100.0 * done / self.total_rounds:.0f}% | "
            f"elapsed {_clock(time.monotonic() - self.t0)} | ETA {'?' if eta is None else _clock(eta)}"
        )


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _clock(seconds: float) -> str:
    m, sec = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
