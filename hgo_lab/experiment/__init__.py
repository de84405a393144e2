"""``hgo-experiment``: reproduce the paper's figures 3–8 (Boubouh et al., SRDS 2022, §6).

A *scenario* is a TOML file (``hgo_lab/scenarios/fig3.toml`` .. ``fig8.toml``, package data) with a shared
``[base]`` configuration (the fields of :class:`hgo_lab.simulator.SimConfig`), one
``[[variant]]`` table per curve (its ``label`` plus the fields it changes), a number of
``seeds``, and optional ``[quick]`` overrides (a CI-sized version of the same claim)::

    hgo-experiment run fig5                     # the packaged fig5.toml, simulator, all seeds
    hgo-experiment run fig5 --quick --seeds 2   # reduced setting
    hgo-experiment run fig3 --mode net          # real hgo-server + hgo-worker processes

For every variant x seed the run writes a JSON-lines round log (the server's schema),
then ``summary.csv`` — per variant and evaluation round: mean over seeds, the 95 %
confidence half-width (Student t with K-1 degrees of freedom; empty with K = 1) and the
number of seeds — and PNG plots of the metric against the round and against (virtual or
wall) time, mean with a 95 % band.

``--mode net`` runs each variant x seed through the cluster launcher
(:mod:`hgo_lab.cluster`), i.e. a real hgo-server and real hgo-worker processes talking
gRPC, at the scenario's full n and q: the n device sessions are packed into
``[net] processes`` worker processes (default 4, so n = 100 costs four interpreters, not
100). A scenario may still cap n with ``[net] max_workers`` (q, f and v are then scaled
in proportion, with a printed note).

The package holds one concept per module: :mod:`~hgo_lab.experiment.scenario` (the file
schema and per-seed configurations), :mod:`~hgo_lab.experiment.stats` (means and confidence
bands, ``summary.csv``), :mod:`~hgo_lab.experiment.details` (per-seed details),
:mod:`~hgo_lab.experiment.reference` (the scikit-learn reference),
:mod:`~hgo_lab.experiment.netmode` (the translation for ``--mode net``),
:mod:`~hgo_lab.experiment.progress`, :mod:`~hgo_lab.experiment.runner` (running a scenario),
:mod:`~hgo_lab.experiment.report`, :mod:`~hgo_lab.experiment.plots` and
:mod:`~hgo_lab.experiment.cli`.
"""

from __future__ import annotations

import time  # noqa: F401  (tests patch experiment.time.monotonic, the clock of Progress)

from hgo_lab.experiment.cli import main
from hgo_lab.experiment.details import class_accuracy, heterogeneity, seed_details, time_to
from hgo_lab.experiment.netmode import (
    DEFAULT_NET_PROCESSES,
    NET_MIN_TAU_MS,
    cluster_config,
    reduce_for_net,
    run_net,
    run_net_result,
    scale_time_for_net,
    server_config,
)
from hgo_lab.experiment.plots import plot_runs
from hgo_lab.experiment.progress import Progress
from hgo_lab.experiment.reference import centralized_reference
from hgo_lab.experiment.report import details_report, report
from hgo_lab.experiment.runner import run_scenario
from hgo_lab.experiment.scenario import (
    METRICS,
    SCENARIOS,
    SOURCE_ROOT,
    Scenario,
    ScenarioError,
    Variant,
    load_scenario,
    resolve_scenario_path,
    seed_config,
)
from hgo_lab.experiment.stats import (
    SUMMARY_FIELDS,
    final_values,
    read_summary,
    summarize,
    write_summary,
)

__all__ = [
    "DEFAULT_NET_PROCESSES", "METRICS", "NET_MIN_TAU_MS", "SCENARIOS", "SOURCE_ROOT",
    "SUMMARY_FIELDS", "Progress", "Scenario", "ScenarioError", "Variant", "centralized_reference",
    "class_accuracy", "cluster_config", "details_report", "final_values", "heterogeneity",
    "load_scenario", "main", "plot_runs", "read_summary", "reduce_for_net", "report",
    "resolve_scenario_path", "run_net", "run_net_result", "run_scenario", "scale_time_for_net",
    "seed_config", "seed_details", "server_config", "summarize", "time_to", "write_summary",
]  # fmt: skip
