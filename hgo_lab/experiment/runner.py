"""Running a scenario: every variant x seed, then ``summary.csv``, ``details.json``,
``run.json``, the plots and the report in the output directory."""

from __future__ import annotations

import contextlib
import json
import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hgo_common import roundlog
from hgo_common.plugins import PluginError
from hgo_lab.experiment.details import seed_details
from hgo_lab.experiment.executor import Executor, InlineExecutor, SimTask
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
from hgo_lab.experiment.report import clock_of_mode, report
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
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run every variant x seed, write logs, summary.csv and plots into ``out``.

    Simulated runs go to ``executor`` (default: one after another in this process; see
    :mod:`hgo_lab.experiment.executor`); net-mode runs always run here, one after another.
    A run that fails is reported with its traceback and left out of the statistics; the
    others finish (the result's ``"failed"`` lists them, and so does ``run.json``).
    """
    if mode not in ("sim", "net"):
        raise ValueError(f"mode must be 'sim' or 'net', got {mode!r}")
    if mode == "sim" and sc.net.get("only"):
        raise ValueError(
            f"scenario {sc.name!r} runs only over the wire ([net] only = true: real device constraints "
            "or --throttle off have no simulated meaning): use --mode net"
        )
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    notes: list[str] = []
    used_data: set[str] = set()
    data_warnings: list[str] = []
    progress = Progress(
        sc.name, len(sc.variants) * sc.seeds, sum(v.config.rounds for v in sc.variants) * sc.seeds, echo
    )
    done: dict[tuple[str, int], tuple[list[dict[str, Any]], dict[str, Any]]] = {}
    failed: list[dict[str, Any]] = []
    tasks = [SimTask(v.label, s, seed_config(v, s)) for v in sc.variants for s in sc.seed_indices]
    for t in tasks:
        log_path(logs, t.label, t.seed_index).unlink(missing_ok=True)
        _plain(log_path(logs, t.label, t.seed_index)).unlink(missing_ok=True)

    def finish(
        task: SimTask, cfg: Any, recs: list[dict[str, Any]], d: int, per_class: dict[str, float]
    ) -> None:
        name = f"{task.label} seed {task.seed_index}"
        det = seed_details(recs, d, sc.metric, sc.thresholds)
        det.update(seed=int(cfg.seed), v=cfg.quorum_for(cfg.q_eff), per_class=per_class)
        done[(task.label, task.seed_index)] = (recs, det)
        last: dict[str, Any] = next((r for r in reversed(recs) if sc.metric in r), {})
        progress.end_run(
            cfg.rounds,
            f"{name}: {len(recs)} rounds, {sc.metric}={_fmt(last.get(sc.metric))} "
            f"t={last.get('t', 0.0):.2f}s",
            label=name,
        )

    def fail(task: SimTask, error: str) -> None:
        failed.append({"variant": task.label, "seed": task.seed_index, "error": error})
        echo(f"[{sc.name}] {task.label} seed {task.seed_index} FAILED:\n{error.rstrip()}")
        progress.end_run(task.cfg.rounds, f"{task.label} seed {task.seed_index}: FAILED",
                         label=f"{task.label} seed {task.seed_index}")  # fmt: skip

    ex: Executor = executor or InlineExecutor()
    if mode == "sim":
        with contextlib.closing(
            ex.run(tasks, on_start=lambda t: progress.start_run(f"{t.label} seed {t.seed_index}"),
                   on_rounds=lambda t, n: progress.round_done(n=n, run=f"{t.label} seed {t.seed_index}"))
        ) as outcomes:  # fmt: skip
            for res in outcomes:
                task = next(t for t in tasks if (t.label, t.seed_index) == (res.label, res.seed_index))
                for msg in res.warnings:
                    _note(notes, msg, echo)
                if res.plugin_error is not None:
                    raise PluginError(res.plugin_error)
                if res.error is not None:
                    fail(task, res.error)
                    continue
                write_log(log_path(logs, task.label, task.seed_index), res.records)
                if res.dataset != task.cfg.dataset:
                    used_data.add(res.dataset)
                if res.data_warning and res.data_warning not in data_warnings:
                    data_warnings.append(res.data_warning)
                finish(task, task.cfg, res.records, res.d, res.per_class)
    else:
        variant_net = {v.label: {**sc.net, **v.net} for v in sc.variants}
        max_workers = int(sc.net.get("max_workers", 0))
        processes = int(sc.net.get("processes", DEFAULT_NET_PROCESSES))
        for task in tasks:
            progress.start_run(f"{task.label} seed {task.seed_index}")
            try:
                cfg = task.cfg
                if max_workers:
                    cfg, note = reduce_for_net(cfg, max_workers)
                    if note:
                        _note(notes, note, echo)
                cfg, note = scale_time_for_net(cfg, float(sc.net.get("min_tau_ms", NET_MIN_TAU_MS)))
                if note:
                    _note(notes, note, echo)

                def net_echo(m: str) -> None:
                    m = m.removeprefix("WARNING: ")  # _note adds it (once)
                    if m.startswith("dataset ") and " not found " in m and m not in data_warnings:
                        data_warnings.append(m)  # the data-set fallback of run_net_result
                    _note(notes, m, echo)

                # the cluster's log is copied plain, then compressed like the simulator's
                path = _plain(log_path(logs, task.label, task.seed_index))
                net = run_net_result(
                    cfg, path, echo=net_echo, processes=processes, net=variant_net[task.label]
                )
                roundlog.compress_file(path)
                recs = list(net.records)
                per_class = net_class_accuracy(cfg, net.model) if sc.net.get("per_class") else {}
            except PluginError:
                raise
            except Exception:
                fail(task, traceback.format_exc())
                continue
            # d from the server's Status reply (no worker need have delivered all of it)
            longest = max((int(w["prefix"]) for r in recs for w in r.get("workers", [])), default=1)
            finish(task, cfg, recs, int(net.dim or longest), per_class)
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    for var in sc.variants:
        got = [done[(var.label, s)] for s in sc.seed_indices if (var.label, s) in done]
        runs[var.label] = [recs for recs, _ in got]
        details[var.label] = [det for _, det in got]
    order = {(t.label, t.seed_index): i for i, t in enumerate(tasks)}
    failed.sort(key=lambda x: order[(x["variant"], x["seed"])])  # the scenario's order, not completion's
    if failed:
        echo(f"[{sc.name}] {len(failed)} of {len(tasks)} runs FAILED: "
             + ", ".join(f"{x['variant']} seed {x['seed']}" for x in failed))  # fmt: skip
    rows = summarize(runs)
    write_summary(rows, out / "summary.csv")
    ref: dict[str, Any] = {}
    if sc.reference and sc.variants:
        try:
            ref = centralized_reference(seed_config(sc.variants[0], 0))
        except (ImportError, ValueError) as exc:  # pragma: no cover - sklearn is a dependency
            _note(notes, f"no centralized reference: {exc}", echo)
    clock = clock_of_mode(mode)
    doc = {
        "metric": sc.metric,
        # what "time" means in this run's logs and tables: the simulator's virtual clock or the
        # wall clock of a run over the wire (issue 22.5: virtual time is labelled virtual)
        "clock": clock,
        "thresholds": sc.thresholds,
        "reference": ref,
        "variants": {
            v.label: {"rate_model": v.rate_model, "quorum": v.quorum, "seeds": details[v.label]}
            for v in sc.variants
            if details[v.label]
        },
    }
    (out / "details.json").write_text(json.dumps(_nan_to_none(doc), indent=2), encoding="utf-8")
    title = sc.title + (f" [data: {', '.join(sorted(used_data))}]" if used_data else "")
    title += f" ({mode})" if mode == "net" else ""
    plots = plot_runs(runs, sc.metric, title, out / sc.name, clock=clock)
    meta = {
        "scenario": str(sc.path),
        "name": sc.name,
        "mode": mode,
        "seeds": sc.seeds,
        "first_seed": sc.first_seed,
        "claim": sc.claim,
        "notes": notes,
        # the data-set fallback (also in the first round-log record of each run, as data_warning)
        "data_warning": "; ".join(data_warnings) or None,
        "executor": ex.name if mode == "sim" else "inline",
        "failed": failed,
        "variants": {
            v.label: {**_jsonable(v.config.to_dict()), "rate_model": v.rate_model, "quorum": v.quorum}
            for v in sc.variants
        },
    }
    (out / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    echo(f"[{sc.name}] wrote {out / 'summary.csv'} and {', '.join(p.name for p in plots)}")
    echo(report(rows, sc.metric, details=doc))
    return {"rows": rows, "plots": plots, "notes": notes, "runs": runs, "details": doc, "failed": failed}


def net_class_accuracy(cfg: Any, model_file: Path | None) -> dict[str, float]:
    """Test accuracy per class of a net run's exported model (empty when none was written)."""
    if model_file is None:
        return {}
    from hgo_common import models
    from hgo_lab.experiment.details import class_accuracy

    return class_accuracy(cfg, np.asarray(models.load(model_file).weights, dtype=np.float64))


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


def log_path(logs: Path, label: str, seed_index: int) -> Path:
    """The round log of one run in ``logs``: gzip-compressed JSON lines (issue 23.2: a fig5
    run's 15 MB log is about a tenth of that compressed; ``hgo_common.roundlog.read`` and
    ``hgo-plot`` read it as they read the plain form)."""
    return logs / f"{_slug(label)}_seed{seed_index}.jsonl.gz"


def _plain(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".gz"))


def write_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Write one run's round log (the server's schema, :mod:`hgo_common.roundlog`)."""
    roundlog.write(path, records)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
