"""Where the simulated runs of a scenario execute: in this process, in a pool of processes
on this machine, or on a Ray cluster (issue 23.1).

The variant x seed runs of a figure (Boubouh et al., SRDS 2022, §6: several seeds per
curve) are independent and the simulator is deterministic, so they may run anywhere and in
any order: every executor returns the same :class:`SimOutcome` per run, and the runner
(:mod:`hgo_lab.experiment.runner`) writes the logs and the statistics from them in the
scenario's order. A run that raises becomes an outcome carrying its traceback; the others
finish.

- :class:`InlineExecutor`: one run after another in this process (per-round progress).
- :class:`PoolExecutor`: a process pool (default size: the cores) of the *spawn* kind
  (grpc and ``fork`` do not mix, and a forked child would inherit the parent's BLAS
  thread pools).
- :class:`RayExecutor`: one Ray task per run (``pip install 'hgo[ray]'``); the address is
  ``auto`` (a running cluster), ``ray://host:10001`` (Ray client) or ``local`` (a Ray
  instance started here on demand and shut down afterwards). Every node needs hgo installed
  (and the data sets at the paths the scenario names).

Net-mode runs never go through an executor: they need this machine's ports, and run one
after another in the runner.
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
import traceback
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hgo_lab import simulator


@dataclass(frozen=True)
class SimTask:
    """One simulated run: the variant's label, the seed index and its configuration."""

    label: str
    seed_index: int
    cfg: simulator.SimConfig


@dataclass
class SimOutcome:
    """What one run gives back, whichever executor ran it.

    ``records`` is the round log (the server's schema); ``d`` the model's size;
    ``per_class`` the final test accuracy per class; ``dataset`` the data set actually used
    (a fallback differs from ``cfg.dataset``); ``warnings`` what the simulator warned about.
    On failure ``error`` holds the traceback (``plugin_error`` the message when a plug-in
    broke its contract: that stops the whole scenario, as it would every seed).
    """

    label: str
    seed_index: int
    records: list[dict[str, Any]] = field(default_factory=list)
    d: int = 0
    per_class: dict[str, float] = field(default_factory=dict)
    dataset: str = ""
    data_warning: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    plugin_error: str | None = None
    seconds: float = 0.0


def run_sim_task(task: SimTask, progress: Callable[[dict[str, Any]], None] | None = None) -> SimOutcome:
    """Run one task; never raises (a failure is returned with its traceback).

    A module-level function, so that a spawned process and a Ray worker can import it.
    """
    from hgo_common.plugins import PluginError
    from hgo_lab.experiment.details import class_accuracy

    out = SimOutcome(task.label, task.seed_index)
    t0 = time.monotonic()
    try:
        res = simulator.run(task.cfg, None, warn=out.warnings.append, progress=progress)
        out.records = list(res.records)
        out.d = int(np.asarray(res.weights).size)
        out.per_class = class_accuracy(task.cfg, res.weights)
        out.dataset = res.dataset
        out.data_warning = res.data_warning
    except PluginError as exc:
        out.plugin_error = str(exc)
        out.error = traceback.format_exc()
    except Exception:
        out.error = traceback.format_exc()
    out.seconds = time.monotonic() - t0
    return out


def _failed(task: SimTask, error: str) -> SimOutcome:
    return SimOutcome(task.label, task.seed_index, error=error)


class Executor(Protocol):
    """Runs tasks and yields their outcomes as they finish (in any order).

    ``on_start(task)`` is called before a run where the executor knows (in this process),
    ``on_rounds(task, n)`` when n more rounds of a run are done (every round in this
    process, about every 0.2 s from a pool process, not at all from Ray).
    """

    name: str

    def run(
        self,
        tasks: Sequence[SimTask],
        on_start: Callable[[SimTask], None] | None = None,
        on_rounds: Callable[[SimTask, int], None] | None = None,
    ) -> Generator[SimOutcome, None, None]: ...


def default_jobs() -> int:
    """The cores this process may use (its CPU affinity where the platform tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows
        return max(1, os.cpu_count() or 1)


class InlineExecutor:
    """One run after another in this process; ``on_rounds`` sees every round."""

    name = "inline"

    def run(
        self,
        tasks: Sequence[SimTask],
        on_start: Callable[[SimTask], None] | None = None,
        on_rounds: Callable[[SimTask, int], None] | None = None,
    ) -> Generator[SimOutcome, None, None]:
        for task in tasks:
            if on_start is not None:
                on_start(task)
            yield run_sim_task(task, None if on_rounds is None else _one_round(on_rounds, task))


def _one_round(on_rounds: Callable[[SimTask, int], None], task: SimTask) -> Callable[[dict[str, Any]], None]:
    return lambda rec: on_rounds(task, 1)


class PoolExecutor:
    """``jobs`` spawned processes on this machine; each reports its rounds about every 0.2 s."""

    name = "pool"

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def run(
        self,
        tasks: Sequence[SimTask],
        on_start: Callable[[SimTask], None] | None = None,
        on_rounds: Callable[[SimTask, int], None] | None = None,
    ) -> Generator[SimOutcome, None, None]:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

        ctx = multiprocessing.get_context("spawn")
        rounds_q: Any = ctx.Queue()
        by_key = {(t.label, t.seed_index): t for t in tasks}
        with ProcessPoolExecutor(
            max_workers=min(self.jobs, len(tasks)),
            mp_context=ctx,
            initializer=_pool_init,
            initargs=(rounds_q,),
        ) as pool:
            pending: dict[Future[SimOutcome], SimTask] = {pool.submit(_pool_task, t): t for t in tasks}
            try:
                while pending:
                    done, _ = wait(pending, timeout=_TICK_S, return_when=FIRST_COMPLETED)
                    while True:  # the rounds reported since the last look
                        try:
                            label, seed_index, n = rounds_q.get_nowait()
                        except queue.Empty:
                            break
                        if on_rounds is not None and (label, seed_index) in by_key:
                            on_rounds(by_key[(label, seed_index)], n)
                    for fut in done:
                        task = pending.pop(fut)
                        exc = fut.exception()
                        if exc is not None:  # the worker process died (killed, out of memory)
                            text = "".join(traceback.format_exception(exc))
                            yield _failed(task, f"the pool process running it failed:\n{text}")
                        else:
                            yield fut.result()
            finally:
                for fut in pending:
                    fut.cancel()
        rounds_q.close()


_TICK_S = 0.2  # how often a pool process reports its rounds, and the parent looks
_ROUNDS_Q: Any = None  # in a pool process: the queue to the parent


def _pool_init(rounds_q: Any) -> None:
    global _ROUNDS_Q
    _ROUNDS_Q = rounds_q


def _pool_task(task: SimTask) -> SimOutcome:
    """:func:`run_sim_task` in a pool process, sending its rounds to the parent every ~0.2 s."""
    n, last = 0, time.monotonic()

    def tick(rec: dict[str, Any]) -> None:
        nonlocal n, last
        n += 1
        now = time.monotonic()
        if now - last >= _TICK_S and _ROUNDS_Q is not None:
            _ROUNDS_Q.put((task.label, task.seed_index, n))
            n, last = 0, now

    return run_sim_task(task, tick)


class RayExecutor:
    """One Ray task per run (1 CPU each). ``address``: ``auto``, ``ray://host:port`` or
    ``local`` (start a Ray instance here with ``num_cpus`` CPUs, default all)."""

    name = "ray"

    def __init__(self, address: str = "local", num_cpus: int | None = None) -> None:
        self.address = address
        self.num_cpus = num_cpus

    def run(
        self,
        tasks: Sequence[SimTask],
        on_start: Callable[[SimTask], None] | None = None,
        on_rounds: Callable[[SimTask, int], None] | None = None,
    ) -> Generator[SimOutcome, None, None]:
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            import logging

            if self.address == "local":
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
            else:
                ray.init(address=self.address, logging_level=logging.WARNING)
            started = True
        try:
            remote = ray.remote(num_cpus=1)(run_sim_task)
            pending = {remote.remote(t): t for t in tasks}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        yield ray.get(ref)
                    except Exception:  # the Ray worker died or the task could not be scheduled
                        yield _failed(task, f"the Ray task running it failed:\n{traceback.format_exc()}")
            for ref in pending:  # pragma: no cover - only when the caller stops early
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
        finally:
            if started:
                ray.shutdown()


def import_ray() -> Any:
    """``ray``, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "--ray needs Ray, an optional extra: pip install 'hgo[ray]' (or make install-ray)"
        ) from exc
    return ray


def make_executor(jobs: int | None = None, ray_address: str | None = None, n_tasks: int = 0) -> Executor:
    """The executor the command line asks for: Ray when ``ray_address`` is given, else a
    process pool of ``jobs`` (default: :func:`default_jobs`) processes, or this process when
    one process is enough (one job or one run)."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if ray_address is not None:
        import_ray()
        return RayExecutor(ray_address, num_cpus=jobs)
    n = default_jobs() if jobs is None else jobs
    if min(n, n_tasks) <= 1:
        return InlineExecutor()
    return PoolExecutor(n)
