"""The figures of a scenario run: the metric against the round and against time, mean over
seeds with a 95 % band per variant (drawn by :mod:`hgo_lab.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hgo_lab.experiment.stats import _seed_curves


def plot_runs(
    runs: dict[str, list[list[dict[str, Any]]]],
    metric: str,
    title: str,
    out_prefix: Path,
    *,
    clock: str = "virtual",
) -> list[Path]:
    """Two PNGs: ``metric`` vs round and vs time; mean over seeds with a 95 % band per variant.

    Drawn by :func:`hgo_lab.plots.plot_bands`; against time, seeds whose clocks differ
    (sgd with tau = inf) are interpolated on the time range all of them cover.
    """
    from hgo_lab import plots

    written: list[Path] = []
    if not plots.available():
        return written  # no matplotlib (the lab extra): summary.csv and the logs only
    time_label = "time (s, wall clock)" if clock == "wall" else "time (s, virtual)"
    for xkey, xlabel, suffix in (("round", "round", "round"), ("t", time_label, "time")):
        curves = {label: _seed_curves(logs, metric, xkey) for label, logs in runs.items()}
        curves = {k: v for k, v in curves.items() if v}
        if not curves:
            continue
        ends = [float(c[0][-1]) for group in curves.values() for c in group]
        if xkey == "t" and min(ends) > 0 and max(ends) / min(ends) > 20:
            # SGD(tau=inf) can take 100x longer than HGO: a linear axis would squash HGO
            # into a vertical line, so time goes on a log10 axis.
            curves = {k: [(np.log10(x), y) for x, y in v] for k, v in curves.items()}
            xlabel = "log10 " + xlabel
        path = out_prefix.with_name(f"{out_prefix.name}_{metric}_vs_{suffix}.png")
        try:
            plots.plot_bands(curves, path, xlabel=xlabel, ylabel=f"test {metric}", title=title)
        except ValueError:
            # Seeds whose time ranges do not overlap (a few evaluations of wall-clock runs)
            # have no common grid for a band: draw every seed's curve instead.
            series = [
                plots.series_from_records(recs, f"{label} (seed {i})")
                for label, logs in runs.items()
                for i, recs in enumerate(logs)
            ]
            plots.plot_metric(series, path, metric=metric, against_time=xkey == "t", title=title)
        written.append(path)
    return written
