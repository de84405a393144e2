"""Running a scenario: every variant x seed, then ``summary.csv``, ``details.json``,
``run.json``, the plots and the report in the output directory."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hgo_lab import simulator
from hgo_lab.experiment.details import class_accuracy, seed_details
from hgo_lab.experiment.netmode import (
    DEFAULT_NET_PROCESSES,
    NET_MIN_TAU_MS,
    reduce_for_net,
    run_net_result,
    scale_time_for_net,
)
from hgo_lab.experiment.plots import plot_runs
from hgo_lab.experiment.progress import Progress
from hgo_lab.experiment.reference import centralized_reference
from hgo_lab.experiment.report import report
from hgo_lab.experiment.scenario import Scenario, seed_config
from hgo_lab.experiment.stats import summarize, write_summary


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run_scenario(
    sc: Scenario,
    out: Path,
    *,
    mode: str = "sim",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every variant x seed, write logs, summary.csv and plots into ``out``."""
    if mode not in ("sim", "net"):
        raise ValueError(f"mode must be 'sim' or 'net', got {mode!r}")
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    notes: list[str] = []
    max_workers = int(sc.net.get("max_workers", 0))
    processes = int(sc.net.get("processes", DEFAULT_NET_PROCESSES))
    used_data: set[str] = set()
    progress = Progress(
        sc.name, len(sc.variants) * sc.seeds, sum(v.config.rounds for v in sc.variants) * sc.seeds, echo
    )
    details: dict[str, list[dict[str, Any]]] = {}
    for var in sc.variants:
        runs[var.label] = []
        details[var.label] = []
        for s in range(sc.seeds):
            cfg = seed_config(var, s)
            log_path = logs / f"{_slug(var.label)}_seed{s}.jsonl"
            log_path.unlink(missing_ok=True)
            progress.start_run(f"{var.label} seed {s}")
            per_class: dict[str, float] = {}
            if mode == "sim":
                res = simulator.run(
                    cfg, log_path, warn=lambda m: _note(notes, m, echo), progress=progress.round_done
                )
                recs = res.records
                d = int(np.asarray(res.weights).size)
                per_class = class_accuracy(cfg, res.weights)
                if res.dataset != cfg.dataset:
                    used_data.add(res.dataset)
            else:
                if max_workers:
                    cfg, note = reduce_for_net(cfg, max_workers)
                    if note:
                        _note(notes, note, echo)
                cfg, note = scale_time_for_net(cfg, float(sc.net.get("min_tau_ms", NET_MIN_TAU_MS)))
                if note:
                    _note(notes, note, echo)
                net = run_net_result(cfg, log_path, echo=lambda m: _note(notes, m, echo), processes=processes)
                recs = list(net.records)
                # d from the server's Status reply (no worker need have delivered all of it)
                longest = max((int(w["prefix"]) for r in recs for w in r.get("workers", [])), default=1)
                d = int(net.dim or longest)
            runs[var.label].append(recs)
            det = seed_details(recs, d, sc.metric, sc.thresholds)
            det.update(seed=int(cfg.seed), v=cfg.quorum_for(cfg.q_eff), per_class=per_class)
            details[var.label].append(det)
            last: dict[str, Any] = next((r for r in reversed(recs) if sc.metric in r), {})
            progress.end_run(
                cfg.rounds,
                f"{var.label} seed {s}: {len(recs)} rounds, {sc.metric}={_fmt(last.get(sc.metric))} "
                f"t={last.get('t', 0.0):.2f}s",
            )
    rows = summarize(runs)
    write_summary(rows, out / "summary.csv")
    ref: dict[str, Any] = {}
    if sc.reference and sc.variants:
        try:
            ref = centralized_reference(seed_config(sc.variants[0], 0))
        except (ImportError, ValueError) as exc:  # pragma: no cover - sklearn is a dependency
            _note(notes, f"no centralized reference: {exc}", echo)
    doc = {
        "metric": sc.metric,
        "thresholds": sc.thresholds,
        "reference": ref,
        "variants": {
            v.label: {"rate_model": v.rate_model, "quorum": v.quorum, "seeds": details[v.label]}
            for v in sc.variants
        },
    }
    (out / "details.json").write_text(json.dumps(_nan_to_none(doc), indent=2), encoding="utf-8")
    title = sc.title + (f" [data: {', '.join(sorted(used_data))}]" if used_data else "")
    title += f" ({mode})" if mode == "net" else ""
    plots = plot_runs(runs, sc.metric, title, out / sc.name, clock="wall" if mode == "net" else "virtual")
    meta = {
        "scenario": str(sc.path),
        "name": sc.name,
        "mode": mode,
        "seeds": sc.seeds,
        "claim": sc.claim,
        "notes": notes,
        "variants": {
            v.label: {**_jsonable(v.config.to_dict()), "rate_model": v.rate_model, "quorum": v.quorum}
            for v in sc.variants
        },
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    echo(f"[{sc.name}] wrote {out / 'summary.csv'} and {', '.join(p.name for p in plots)}")
    echo(report(rows, sc.metric, details=doc))
    return {"rows": rows, "plots": plots, "notes": notes, "runs": runs, "details": doc}


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


def _note(notes: list[str], msg: str, echo: Callable[[str], None]) -> None:
    if msg not in notes:
        notes.append(msg)
        echo(f"WARNING: {msg}" if not msg.startswith("NOTE") else msg)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
