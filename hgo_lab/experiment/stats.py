"""Statistics over seeds: per variant and evaluation round, the mean, the 95 % confidence
half-width (Student t with K-1 degrees of freedom) and the number of seeds; ``summary.csv``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hgo_lab.experiment.scenario import METRICS


def _seed_curves(
    seed_logs: list[list[dict[str, Any]]], metric: str, xkey: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (x, metric) curve per seed from the evaluation records (``null`` becomes NaN)."""
    curves = []
    for recs in seed_logs:
        pts = [
            (float(r[xkey]), math.nan if r[metric] is None else float(r[metric])) for r in recs if metric in r
        ]
        if pts:
            curves.append((np.array([p[0] for p in pts]), np.array([p[1] for p in pts])))
    return curves


def summarize(
    runs: dict[str, list[list[dict[str, Any]]]], metrics: Sequence[str] = METRICS
) -> list[dict[str, Any]]:
    """Per variant, metric and evaluation round: mean over seeds, 95 % CI half-width, n seeds.

    The band is :func:`hgo_lab.plots.mean_ci`'s (Student t with K-1 degrees of
    freedom); with one seed the half-width is reported as NaN (empty in the CSV).

    Parameters
    ----------
    runs : mapping label -> list (one per seed) of round-log records
    """
    from hgo_lab import plots

    rows: list[dict[str, Any]] = []
    for label, seed_logs in runs.items():
        for metric in metrics:
            curves = _seed_curves(seed_logs, metric, "round")
            if not curves:
                continue
            # Every seed evaluates on the same rounds; keep the rounds all of them reached.
            common = sorted(set.intersection(*(set(c[0].tolist()) for c in curves)))
            grid = np.array(common, dtype=np.float64)
            band = plots.mean_ci(curves, grid=grid)
            t_by_round: dict[int, list[float]] = {}
            for recs in seed_logs:
                for r in recs:
                    if metric in r:
                        t_by_round.setdefault(int(r["round"]), []).append(float(r["t"]))
            for j, k in enumerate(common):
                half = float(band.upper[j] - band.mean[j]) if band.n > 1 else math.nan
                rows.append(
                    {
                        "variant": label,
                        "metric": metric,
                        "round": int(k),
                        "t_mean": float(np.mean(t_by_round[int(k)])),
                        "mean": float(band.mean[j]),
                        "ci95": half,
                        "n": band.n,
                    }
                )
    return rows


SUMMARY_FIELDS = ("variant", "metric", "round", "t_mean", "mean", "ci95", "n")


def write_summary(rows: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})


def read_summary(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out.append(
                {
                    "variant": r["variant"],
                    "metric": r["metric"],
                    "round": int(r["round"]),
                    "t_mean": float(r["t_mean"]),
                    "mean": float(r["mean"]) if r["mean"] else math.nan,
                    "ci95": float(r["ci95"]) if r["ci95"] else math.nan,
                    "n": int(r["n"]),
                }
            )
    return out


def final_values(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """The summary row of ``metric`` at the last evaluation round of each variant."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["metric"] == metric and (r["variant"] not in out or r["round"] >= out[r["variant"]]["round"]):
            out[r["variant"]] = r
    return out
