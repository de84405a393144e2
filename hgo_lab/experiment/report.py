"""Markdown reports of a run: final values with their 95 % CI, time to accuracy per seed,
heterogeneity and per-class accuracy (``hgo-experiment report``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hgo_lab.experiment.stats import final_values


def _fmt_t(x: Any) -> str:
    return "—" if x is None else f"{float(x):.3g}"


def _spread(values: list[float]) -> str:
    """``mean ± sd (min–max)`` with the sample standard deviation (ddof = 1); one value alone."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1):.3f} ({a.min():.3f}–{a.max():.3f})"


EARLY_ROUNDS = (9, 19, 49, 99, 199, 499)
"""Rounds (0-based) at which :func:`report` shows the mean curve: the convergence rate."""


def early_report(rows: list[dict[str, Any]], metric: str = "accuracy") -> str:
    """Markdown table: per variant, the mean over seeds at :data:`EARLY_ROUNDS` (those evaluated)."""
    mine = [r for r in rows if r["metric"] == metric]
    have = sorted({int(r["round"]) for r in mine if int(r["round"]) in EARLY_ROUNDS})
    if not have:
        return ""
    out = [
        "",
        f"Mean {metric} over seeds at rounds " + ", ".join(str(k) for k in have) + ":",
        "",
        "| variant | " + " | ".join(f"@{k}" for k in have) + " |",
        "|---|" + "---|" * len(have),
    ]
    for label in dict.fromkeys(r["variant"] for r in mine):
        at = {int(r["round"]): float(r["mean"]) for r in mine if r["variant"] == label}
        out.append(f"| {label} | " + " | ".join("—" if k not in at else f"{at[k]:.3f}" for k in have) + " |")
    return "\n".join(out)


def clock_of_mode(mode: str) -> str:
    """The clock of a run's times by its mode: ``wall`` over the wire (``net``), else ``virtual``."""
    return "wall" if mode == "net" else "virtual"


def clock_unit(details: dict[str, Any] | None) -> str:
    """How a report names its time unit: ``virtual s`` for the simulator, ``wall-clock s`` for a run
    over the wire (``details.json``'s ``clock``, which ``hgo-experiment report`` takes from ``run.json``'s
    ``mode`` for files written before the clock was recorded)."""
    return "wall-clock s" if (details or {}).get("clock") == "wall" else "virtual s"


def details_report(details: dict[str, Any]) -> str:
    """Markdown tables from ``details.json``: time to accuracy per seed, heterogeneity, per-class accuracy."""
    metric = details.get("metric", "accuracy")
    thr = [f"{x:g}" for x in details.get("thresholds", [])]
    out = [
        "",
        f"Time to 95 % of the final {metric} ({clock_unit(details)}, per seed; round in brackets)"
        + (f" and to the fixed levels {', '.join(thr)}" if thr else "")
        + ":",
        "",
        "| variant | final per seed | final: mean ± sd (min–max) | t95 per seed | "
        + " | ".join(f"t({x})" for x in thr)
        + (" |" if thr else "|"),
        "|---|---|---|---|" + "---|" * len(thr),
    ]
    for label, vd in details["variants"].items():
        seeds = vd["seeds"]
        finals = " / ".join("—" if x["final"] is None else f"{x['final']:.3f}" for x in seeds)
        t95 = " / ".join(f"{_fmt_t(x['t95'])} [{x['round95']}]" for x in seeds)
        cells = [" / ".join(_fmt_t(x["thresholds"].get(k)) for x in seeds) for k in thr]
        spread = _spread([x["final"] for x in seeds if x["final"] is not None])
        row = f"| {label} | {finals} | {spread} | {t95} | "
        out.append(row + " | ".join(cells) + (" |" if cells else ""))
    profs = sorted({p for vd in details["variants"].values() for x in vd["seeds"] for p in x["prefix_pct"]})
    out += [
        "",
        "Heterogeneity (means over seeds): block |B_k| in % of d and share of updating rounds "
        "with |B_k| < d; honest prefix in % of d per profile (share of deliveries < d):",
        "",
        "| variant | v | block % of d | rounds with block < d | " + " | ".join(profs) + " |",
        "|---|---|---|---|" + "---|" * len(profs),
    ]
    for label, vd in details["variants"].items():
        seeds = vd["seeds"]
        blk = float(np.mean([x["block_pct"] for x in seeds]))
        part = float(np.mean([x["partial_block"] for x in seeds]))
        cells = []
        for p in profs:
            pv = [x["prefix_pct"][p] for x in seeds if p in x["prefix_pct"]]
            ps = [x["partial"][p] for x in seeds if p in x["partial"]]
            cells.append(f"{np.mean(pv):.1f} ({100 * np.mean(ps):.0f} %)" if pv else "—")
        vs = sorted({str(x.get("v")) for x in seeds})
        out.append(
            f"| {label} | {', '.join(vs)} | {blk:.1f} | {100 * part:.0f} % | " + " | ".join(cells) + " |"
        )
    classes = sorted(
        {c for vd in details["variants"].values() for x in vd["seeds"] for c in x.get("per_class", {})},
        key=int,
    )
    ref = details.get("reference") or {}
    if classes:
        out += [
            "",
            "Final test accuracy per class (mean over seeds):",
            "",
            "| variant | " + " | ".join(classes) + " |",
            "|---|" + "---|" * len(classes),
        ]
        for label, vd in details["variants"].items():
            seeds = vd["seeds"]
            cells = [f"{np.mean([x['per_class'].get(c, math.nan) for x in seeds]):.3f}" for c in classes]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        if ref.get("per_class"):
            out.append(
                "| centralized | "
                + " | ".join(f"{ref['per_class'].get(c, math.nan):.3f}" for c in classes)
                + " |"
            )
    if ref:
        out += ["", f"Centralized reference ({ref['model']}, same train/test split, {ref['dataset']}): "
                f"{metric} {ref['accuracy']:.3f}"]  # fmt: skip
    return "\n".join(out)


def report(
    rows: list[dict[str, Any]], metric: str = "accuracy", details: dict[str, Any] | None = None
) -> str:
    """Markdown table: per variant, the final mean ± 95 % CI, the best mean, and the time;
    with ``details`` (``details.json``) also :func:`details_report`."""
    unit = clock_unit(details)
    lines = [
        f"| variant | final {metric} (mean ± 95% CI) | best mean | round | time ({unit}) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in final_values(rows, metric).items():
        best = max(
            (x["mean"] for x in rows if x["variant"] == label and x["metric"] == metric),
            default=math.nan,
        )
        ci = "" if math.isnan(r["ci95"]) else f" ± {r['ci95']:.3f}"
        lines.append(
            f"| {label} | {r['mean']:.3f}{ci} | {best:.3f} | {r['round']} | {r['t_mean']:.1f} | {r['n']} |"
        )
    early = early_report(rows, metric)
    if early:
        lines.append(early)
    if details and details.get("variants"):
        lines.append(details_report(details))
    return "\n".join(lines)
