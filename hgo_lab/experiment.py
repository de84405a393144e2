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
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from hgo_lab import simulator
from hgo_server.config import ServerConfig, parse_duration_ms
from hgo_server.config import from_mapping as server_config_from

# The scenario files ship inside the package (package data), so `hgo-experiment list` and
# `run fig5` work from any directory after a plain `pip install`.
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
# In a source checkout, the directory that holds the package (where ../shared sits beside it).
SOURCE_ROOT = Path(__file__).resolve().parent.parent
METRICS = ("accuracy", "loss")
DEFAULT_NET_PROCESSES = 4  # worker processes hosting a net-mode run's n sessions


# ---------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Variant:
    """One curve of a figure: a label, its simulator configuration (seed 0) and the
    scenario-level settings the simulator does not hold itself.

    ``rate_model``: a key of :data:`hgo_common.profiles.RATE_MODELS`; with a model other
    than ``"hgo"`` every seed's per-worker rates are drawn here (:func:`seed_config`).
    ``quorum``: what the file said for v (an integer, ``"auto"`` or None); ``"auto"`` is
    resolved into ``config.v`` by :func:`hgo_common.rounds.auto_quorum`.
    """

    label: str
    config: simulator.SimConfig
    rate_model: str = "hgo"
    quorum: int | str | None = None


@dataclass
class Scenario:
    name: str
    title: str
    claim: str
    seeds: int
    metric: str
    variants: list[Variant]
    path: Path
    notes: list[str] = field(default_factory=list)
    net: dict[str, Any] = field(default_factory=dict)
    thresholds: list[float] = field(default_factory=list)
    reference: bool = True


class ScenarioError(ValueError):
    """A scenario file is unreadable or wrong; the message names the file and the problem."""


# The keys a scenario file may hold besides the SimConfig fields, with their TOML types.
_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "title": str, "claim": str, "metric": str, "seeds": int, "notes": list,
    "base": dict, "quick": dict, "variant": list, "net": dict, "thresholds": list, "reference": bool,
}  # fmt: skip
# Settings a [base] / [[variant]] table may hold that hgo-experiment handles itself.
_SPECIAL = ("rate_model", "v")
_QUICK_KEYS: dict[str, type | tuple[type, ...]] = {"base": dict, "seeds": int}
_NET_KEYS: dict[str, type | tuple[type, ...]] = {"max_workers": int, "processes": int}
_TOML_TYPE = {str: "a string", int: "an integer", list: "an array", dict: "a table"}


def _check_table(table: dict[str, Any], keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    """Unknown keys and values of the wrong TOML type in a fixed-schema table."""
    for key, value in table.items():
        if key not in keys:
            raise ValueError(f"{where}: unknown key {key!r}; expected one of {sorted(keys)}")
        want = keys[key]
        if not isinstance(value, want) or isinstance(value, bool):
            what = _TOML_TYPE.get(want, str(want)) if isinstance(want, type) else str(want)
            raise ValueError(f"{where}: {key!r} must be {what}, got {value!r}")


def _value_ok(value: Any, hint: Any) -> bool:
    """Does a TOML value (arrays already tuples) fit a SimConfig field's type hint?"""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_value_ok(value, h) for h in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # TOML writes 60 for 60.0
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_value_ok(x, args[0]) for x in value)
        return len(value) == len(args) and all(_value_ok(x, h) for x, h in zip(value, args, strict=True))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _special(table: Any, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split off ``rate_model`` and ``v = "auto"`` (handled here, not by SimConfig)."""
    from hgo_common import profiles, rounds

    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table of settings, got {table!r}")
    rest, spec = dict(table), {}
    if "rate_model" in rest:
        rm = rest.pop("rate_model")
        if not isinstance(rm, str) or rm not in profiles.RATE_MODELS:
            raise ValueError(f"{where}: rate_model must be one of {list(profiles.RATE_MODELS)}, got {rm!r}")
        spec["rate_model"] = rm
    if isinstance(rest.get("v"), str):
        v = rest.pop("v")
        if v != rounds.QUORUM_AUTO:
            raise ValueError(f"{where}: v must be an integer >= 1 or {rounds.QUORUM_AUTO!r}, got {v!r}")
        spec["v"] = v
    return rest, spec


def _normalize(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table of settings, got {table!r}")
    fields = set(simulator.config_fields())
    hints = typing.get_type_hints(simulator.SimConfig)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ValueError(f"{where}: unknown setting {key!r}; expected one of {sorted(fields)}")
        if key == "tau_ms":
            # the same duration syntax as hgo-server --tau: 60, "250ms", "2s", "inf"
            value = parse_duration_ms(value, "tau_ms")
        if isinstance(value, list):
            value = tuple(tuple(x) if isinstance(x, list) else x for x in value)
        if not _value_ok(value, hints[key]):
            want = simulator.SimConfig.__dataclass_fields__[key].type
            raise ValueError(f"{where}: setting {key!r} must be of type {want}, got {value!r}")
        out[key] = value
    return out


def resolve_scenario_path(scenario: str) -> Path:
    p = Path(scenario)
    if p.is_file():
        return p
    if p.exists():
        raise ScenarioError(f"scenario {scenario!r}: not a regular file")
    cand = SCENARIOS / (scenario if scenario.endswith(".toml") else f"{scenario}.toml")
    if cand.is_file():
        return cand
    raise FileNotFoundError(f"scenario {scenario!r}: no such file, nor {cand}")


def _resolve_data_dir(data_dir: str | None, scenario_path: Path) -> str | None:
    """Relative data dirs are tried from the current directory, then from the source checkout's root."""
    if not data_dir:
        return None
    p = Path(data_dir)
    if p.is_absolute() or p.exists():
        return str(p)
    alt = SOURCE_ROOT / p
    return str(alt.resolve()) if alt.exists() else str(p)


def load_scenario(
    scenario: str | Path, *, quick: bool = False, rounds: int | None = None, seeds: int | None = None
) -> Scenario:
    """Read a scenario file and build one ``SimConfig`` per variant.

    Raises
    ------
    FileNotFoundError
        No such file, nor ``the packaged scenario NAME.toml``.
    ScenarioError
        (a ValueError) The file is unreadable, not UTF-8, not TOML, or holds an unknown
        key, a value of the wrong type or an invalid setting; the message starts with the
        file's path and names the key.
    """
    path = resolve_scenario_path(str(scenario))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(
            f"{path}: not a TOML scenario: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"
        ) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build_scenario(doc, path, quick=quick, rounds=rounds, seeds=seeds)
    except (ValueError, TypeError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def _check_plugins(cfg: simulator.SimConfig) -> None:
    """Load the variant's model, dataset, rule and attack now (plug-ins included), so that a
    bad or missing one stops the run before the first seed, naming the file and variant."""
    from hgo_common import plugins

    plugins.check("dataset", cfg.dataset)
    plugins.check("model", cfg.model)
    plugins.check("rule", cfg.rule)
    if cfg.attack:
        plugins.check("attack", cfg.attack)


def _build_scenario(
    doc: dict[str, Any], path: Path, *, quick: bool, rounds: int | None, seeds: int | None
) -> Scenario:
    _check_table(doc, _TOP_KEYS, "top level")
    _check_table(doc.get("quick", {}), _QUICK_KEYS, "[quick]")
    _check_table(doc.get("net", {}), _NET_KEYS, "[net]")
    base_t, base_s = _special(doc.get("base", {}), "[base]")
    base = _normalize(base_t, "[base]")
    quick_t, quick_s = _special(doc.get("quick", {}).get("base", {}), "[quick.base]")
    quick_over = _normalize(quick_t, "[quick.base]") if quick else {}
    if not quick:
        quick_s = {}
    thresholds = doc.get("thresholds", [])
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and 0 < x <= 1 for x in thresholds):
        raise ValueError(f"'thresholds' must be an array of numbers in (0, 1], got {thresholds!r}")
    n_seeds = int(doc.get("seeds", 3))
    if quick:
        n_seeds = int(doc.get("quick", {}).get("seeds", n_seeds))
    if seeds is not None:
        n_seeds = seeds
    if n_seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {n_seeds}")
    raw_variants = doc.get("variant", [])
    if not raw_variants:
        raise ValueError("a scenario needs at least one [[variant]]")
    if not all(isinstance(vt, dict) for vt in raw_variants):
        raise ValueError(f"'variant' must be an array of tables ([[variant]]), got {raw_variants!r}")
    if not all(isinstance(x, str) for x in doc.get("notes", [])):
        raise ValueError(f"'notes' must be an array of strings, got {doc['notes']!r}")
    variants: list[Variant] = []
    for j, vt in enumerate(raw_variants):
        vt = dict(vt)
        label = vt.pop("label", f"variant{j}")
        if not isinstance(label, str):
            raise ValueError(f"variant {j}: 'label' must be a string, got {label!r}")
        qv_t, qv_s = _special(vt.pop("quick", {}), f"variant {label!r} quick")
        quick_v = _normalize(qv_t, f"variant {label!r} quick")
        if not quick:
            quick_v, qv_s = {}, {}
        vt_t, vt_s = _special(vt, f"variant {label!r}")
        merged = {**base, **_normalize(vt_t, f"variant {label!r}"), **quick_over, **quick_v}
        spec = {**base_s, **vt_s, **quick_s, **qv_s}
        # the last table that sets v wins, whether it says an integer or "auto"
        last_v: Any = None
        for layer_t, layer_s in ((base, base_s), (vt_t, vt_s), (quick_over, quick_s), (quick_v, qv_s)):
            if "v" in layer_t:
                last_v = layer_t["v"]
            elif "v" in layer_s:
                last_v = layer_s["v"]
        if last_v == "auto":
            merged.pop("v", None)
        else:
            spec.pop("v", None)
        if rounds is not None:
            merged["rounds"] = rounds
        merged["data_dir"] = _resolve_data_dir(merged.get("data_dir"), path)
        try:
            config = simulator.SimConfig(**merged)
            _check_plugins(config)
            if spec.get("v") == "auto":
                from hgo_common import rounds as rounds_mod

                config = simulator.with_overrides(
                    config, v=rounds_mod.auto_quorum(config.q_eff, config.rule, config.f_rule)
                )
        except (ValueError, TypeError) as exc:
            raise ValueError(f"variant {label!r}: {exc}") from None
        variants.append(
            Variant(label, config, rate_model=spec.get("rate_model", "hgo"), quorum=spec.get("v", config.v))
        )
    title = str(doc.get("title", path.stem))
    if quick:
        c0 = variants[0].config
        title += f" [quick: {c0.dataset}, n={c0.n}]"
    return Scenario(
        name=str(doc.get("name", path.stem)),
        title=title,
        claim=str(doc.get("claim", "")),
        seeds=n_seeds,
        metric=str(doc.get("metric", "accuracy")),
        variants=variants,
        path=path,
        notes=[str(x) for x in doc.get("notes", [])],
        net=dict(doc.get("net", {})),
        thresholds=[float(x) for x in thresholds],
        reference=bool(doc.get("reference", True)),
    )


# ---------------------------------------------------------------------------------------
# Statistics


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


# ---------------------------------------------------------------------------------------
# Plots


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


# ---------------------------------------------------------------------------------------
# Per-seed details: heterogeneity, time to accuracy, per-class accuracy

RATE_STREAM = 0x52415445  # "RATE": keeps the rates drawn here apart from other seed streams


def seed_config(var: Variant, s: int) -> simulator.SimConfig:
    """The configuration of seed index ``s`` of ``var``: seed + s, and for a rate model
    other than ``"hgo"`` the per-worker rates drawn from it (``profiles.assign`` order,
    generator ``default_rng([seed, RATE_STREAM])``)."""
    from hgo_common import profiles

    cfg = simulator.with_overrides(var.config, seed=var.config.seed + s)
    if var.rate_model != "hgo" and cfg.rates is None:
        rng = np.random.default_rng([int(cfg.seed) % 2**32, RATE_STREAM])
        rates = profiles.draw_rates(profiles.assign(cfg.n, cfg.mix), rng, var.rate_model)
        cfg = simulator.with_overrides(cfg, rates=tuple(rates))
    return cfg


def time_to(recs: list[dict[str, Any]], metric: str, level: float) -> tuple[float, int] | None:
    """(virtual time in s, round) of the first evaluation with ``metric >= level``, or None."""
    for r in recs:
        v = r.get(metric)
        if v is not None and not math.isnan(float(v)) and float(v) >= level:
            return float(r["t"]), int(r["round"])
    return None


def heterogeneity(recs: list[dict[str, Any]], d: int) -> dict[str, Any]:
    """What the rounds of one run looked like.

    ``block_pct``: mean |B_k| / d in % over rounds that updated; ``partial_block``: the
    share of those rounds with |B_k| < d; ``prefix_pct[profile]``: mean prefix / d in %
    of the honest deliveries of that profile; ``partial[profile]``: the share of them
    with prefix < d; ``rounds_updated``: rounds with quorum.
    """
    blocks = [int(r["block"]) for r in recs if r.get("quorum")]
    by_prof: dict[str, list[int]] = {}
    for r in recs:
        for w in r.get("workers", []):
            if not w.get("byzantine"):
                by_prof.setdefault(str(w["profile"]), []).append(int(w["prefix"]))
    return {
        "d": d,
        "rounds_updated": len(blocks),
        "block_pct": 100.0 * float(np.mean(blocks)) / d if blocks else 0.0,
        "partial_block": float(np.mean([b < d for b in blocks])) if blocks else 0.0,
        "prefix_pct": {p: 100.0 * float(np.mean(v)) / d for p, v in sorted(by_prof.items())},
        "partial": {p: float(np.mean([x < d for x in v])) for p, v in sorted(by_prof.items())},
    }


def class_accuracy(cfg: simulator.SimConfig, weights: np.ndarray) -> dict[str, float]:
    """Test accuracy per class of the model ``weights`` (classification datasets only)."""
    from hgo_common import models

    ds, _ = simulator.load_dataset(
        cfg.dataset, cfg.data_dir, seed=cfg.seed if cfg.data_seed is None else cfg.data_seed,
        max_train=cfg.max_train, test_fraction=cfg.test_fraction, warn=lambda m: None,
    )  # fmt: skip
    if ds.task != "classification":
        return {}
    n_classes = max(int(ds.n_classes), 2)
    model = models.create(
        cfg.model, n_features=int(ds.n_features), n_classes=n_classes, hidden=cfg.hidden, l2=cfg.l2
    )
    with np.errstate(all="ignore"):
        pred = np.asarray(model.predict(weights, ds.X_test))
    y = np.asarray(ds.y_test).astype(np.int64)
    return {str(c): float(np.mean(pred[y == c] == c)) for c in np.unique(y)}


def seed_details(
    recs: list[dict[str, Any]], d: int, metric: str, thresholds: Sequence[float]
) -> dict[str, Any]:
    """Final value, time to 95 % of it and to each fixed threshold, and :func:`heterogeneity`."""
    evals = [r for r in recs if r.get(metric) is not None]
    final = float(evals[-1][metric]) if evals else math.nan
    out: dict[str, Any] = {"final": final, "t_end": float(recs[-1]["t"]) if recs else 0.0}
    hit = time_to(evals, metric, 0.95 * final) if evals and final > 0 else None
    out["t95"], out["round95"] = hit if hit else (None, None)
    out["thresholds"] = {f"{x:g}": (time_to(evals, metric, x) or (None, None))[0] for x in thresholds}
    out.update(heterogeneity(recs, d))
    return out


def centralized_reference(cfg: simulator.SimConfig) -> dict[str, Any]:
    """The scikit-learn counterpart of ``cfg.model`` trained centrally on the same train/test split.

    logistic: ``LogisticRegression`` (lbfgs, max_iter 1000); mlp: ``MLPClassifier`` with
    the same hidden layers (adam, max_iter 30, random_state 0). Other models: {}.
    """
    import warnings as _w

    ds, _ = simulator.load_dataset(
        cfg.dataset, cfg.data_dir, seed=cfg.seed if cfg.data_seed is None else cfg.data_seed,
        max_train=cfg.max_train, test_fraction=cfg.test_fraction, warn=lambda m: None,
    )  # fmt: skip
    if ds.task != "classification" or cfg.model not in ("logistic", "mlp"):
        return {}
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    est: Any
    if cfg.model == "logistic":
        est, desc = LogisticRegression(max_iter=1000), "sklearn LogisticRegression(lbfgs, max_iter=1000)"
    else:
        est = MLPClassifier(hidden_layer_sizes=tuple(cfg.hidden), max_iter=30, random_state=0)
        desc = f"sklearn MLPClassifier(hidden={tuple(cfg.hidden)}, adam, max_iter=30)"
    with _w.catch_warnings():
        _w.simplefilter("ignore", ConvergenceWarning)
        est.fit(ds.X_train, ds.y_train)
    pred = est.predict(ds.X_test)
    y = np.asarray(ds.y_test)
    return {
        "model": desc,
        "dataset": ds.name,
        "accuracy": float(np.mean(pred == y)),
        "per_class": {str(int(c)): float(np.mean(pred[y == c] == c)) for c in np.unique(y)},
    }


# ---------------------------------------------------------------------------------------
# Running


def cluster_config(
    cfg: simulator.SimConfig, out: Path, processes: int = DEFAULT_NET_PROCESSES
) -> tuple[Any, list[str]]:
    """The ``hgo_lab.cluster.ClusterConfig`` that runs ``cfg`` on real processes.

    Returns the config and the notes on what the wire cannot reproduce exactly
    (omniscient attackers, the choice of Byzantine workers).
    """
    from hgo_lab import cluster

    notes: list[str] = []
    attack_params = [f"{k}={v}" for k, v in cfg.attack_params.items()]
    if cfg.f and cfg.attack:
        from hgo_common import attacks

        if attacks.get(cfg.attack).kind == "gradient":
            attack_params.append(f"estimates={max(2, cfg.estimate_batches)}")
            if cfg.byzantine_full:
                attack_params.append("full=1")
        if cfg.omniscient:
            notes.append(
                "NOTE: --mode net: Byzantine workers estimate honest gradients from their own shards "
                "(not omniscient as in the simulator)"
            )
    worker_args = ["--budget-policy", cfg.budget_policy, "--rho", str(cfg.rho)]
    mix = cfg.mix if isinstance(cfg.mix, str) else ",".join(str(x) for x in cfg.mix)
    cc = cluster.ClusterConfig(
        workers=cfg.n,
        mix=mix,
        byzantine=cfg.f,
        attack=cfg.attack or "foe",
        attack_params=attack_params,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        rounds=cfg.rounds,
        dataset=cfg.dataset,
        out=out,
        rates=list(cfg.rates) if cfg.rates is not None else None,
        worker_args=worker_args,
        progress=False,
        server=server_config(cfg),
        per_process=max(1, math.ceil(cfg.n / max(1, processes))),
    )
    return cc, notes


def server_config(cfg: simulator.SimConfig) -> ServerConfig:
    """The hgo-server settings that run the scenario ``cfg`` over the wire (no argv round trip)."""
    settings: dict[str, Any] = {
        "q": cfg.q_eff, "v": cfg.v, "tau": cfg.tau_ms, "rule": cfg.rule, "f": cfg.f_rule,
        "rounds": cfg.rounds, "model": cfg.model, "hidden": list(cfg.hidden), "dataset": cfg.dataset,
        "data_dir": cfg.data_dir, "max_train": cfg.max_train, "partition": cfg.partition,
        "algorithm": cfg.algorithm, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "l2": cfg.l2,
        "seed": cfg.seed, "eval_every": cfg.eval_every, "min_workers": cfg.n, "num_shards": cfg.n,
    }  # fmt: skip
    if cfg.tau_auto:
        settings.update(tau="auto", tau_target=cfg.tau_target, tau_min=cfg.tau_min, tau_max=cfg.tau_ms)
    return server_config_from({k: v for k, v in settings.items() if v is not None})


def run_net(
    cfg: simulator.SimConfig,
    log_path: Path,
    *,
    echo: Callable[[str], None] = print,
    start: Callable[..., Any] | None = None,
    processes: int = DEFAULT_NET_PROCESSES,
) -> list[dict[str, Any]]:
    """Run ``cfg`` as a real local cluster (``hgo-run``'s launcher); copy its round log to ``log_path``.

    ``start`` is passed to :func:`hgo_lab.cluster.run_cluster` (tests give their
    process-group launcher). The records; :func:`run_net_result` also gives d.
    """
    return list(run_net_result(cfg, log_path, echo=echo, start=start, processes=processes).records)


def run_net_result(
    cfg: simulator.SimConfig,
    log_path: Path,
    *,
    echo: Callable[[str], None] = print,
    start: Callable[..., Any] | None = None,
    processes: int = DEFAULT_NET_PROCESSES,
) -> Any:
    """:func:`run_net`, returning the whole ``hgo_lab.cluster.ClusterResult`` (d from the
    server's Status reply, wall time, exit codes)."""
    from hgo_lab import cluster

    if cfg.dataset in simulator.FALLBACKS and not (cfg.data_dir and Path(cfg.data_dir).is_dir()):
        alt = simulator.FALLBACKS[cfg.dataset]
        echo(f"WARNING: dataset {cfg.dataset!r} not found at {cfg.data_dir}; using the bundled {alt!r}")
        cfg = simulator.with_overrides(cfg, dataset=alt, data_dir=None)
    work = log_path.with_suffix("")
    cc, notes = cluster_config(cfg, work, processes)
    for note in notes:
        echo(note)
    result = cluster.run_cluster(cc, start=start)
    text = (work / "round_log.jsonl").read_text(encoding="utf-8")
    log_path.write_text(text, encoding="utf-8")
    return result


NET_MIN_TAU_MS = 60.0  # the shortest deadline a net-mode run keeps (loopback latency, 2 cores)


def scale_time_for_net(cfg: simulator.SimConfig, min_tau_ms: float) -> tuple[simulator.SimConfig, str | None]:
    """Stretch a deadline too short for real sockets: τ · u and every λ_i / u.

    The simulator's time unit is abstract (the authors' "time unit" is read as 1 ms, and
    their scenarios use τ = 1). On the wire a 1 ms deadline cannot even carry w_k, so a
    net run with τ < ``min_tau_ms`` runs at u = min_tau_ms / τ: each worker's prefix
    b = λτ/s — what the figure is about — is unchanged, the rates are the simulator's own
    draws (the same λ_i on both sides), and time in the result is wall time at that scale.
    """
    tau = cfg.tau_ms
    if not math.isfinite(tau) or tau >= min_tau_ms:
        return cfg, None
    u = min_tau_ms / tau
    rates = tuple(r / u if r > 0 and math.isfinite(r) else r for r in simulator.worker_rates(cfg))
    changes: dict[str, Any] = {"tau_ms": tau * u, "rates": rates}
    if cfg.tau_auto:
        changes["tau_min"] = cfg.tau_min * u
    note = (
        f"NOTE: --mode net stretches time by {u:g}: tau {tau:g} -> {tau * u:g} ms and every rate / {u:g} "
        "(the prefixes b = rate x tau / s are the simulator's)"
    )
    return simulator.with_overrides(cfg, **changes), note


def reduce_for_net(cfg: simulator.SimConfig, max_workers: int) -> tuple[simulator.SimConfig, str | None]:
    """Scale n (and q, f, v proportionally) down to ``max_workers`` worker processes."""
    if cfg.n <= max_workers:
        return cfg, None
    scale = max_workers / cfg.n
    q = None if cfg.q is None else max(1, min(max_workers, round(cfg.q_eff * scale)))
    f = min(max_workers, round(cfg.f * scale))
    v = None if cfg.v is None else max(1, round(cfg.v * scale))
    rule_f = None if cfg.rule_f is None else round(cfg.rule_f * scale)
    new = simulator.with_overrides(cfg, n=max_workers, q=q, f=f, v=v, rule_f=rule_f)
    note = (
        f"NOTE: --mode net reduces n={cfg.n} -> {max_workers} workers (q={cfg.q_eff} -> {new.q_eff}, "
        f"f={cfg.f} -> {f}); results are for the reduced setting"
    )
    return new, note


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

    def end_run(self, rounds: int, summary: str) -> None:
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
            det.update(seed=int(cfg.seed), v=cfg.v, per_class=per_class)
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


def final_values(rows: list[dict[str, Any]], metric: str) -> dict[str, dict[str, Any]]:
    """The summary row of ``metric`` at the last evaluation round of each variant."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["metric"] == metric and (r["variant"] not in out or r["round"] >= out[r["variant"]]["round"]):
            out[r["variant"]] = r
    return out


def _fmt_t(x: Any) -> str:
    return "—" if x is None else f"{float(x):.3g}"


def details_report(details: dict[str, Any]) -> str:
    """Markdown tables from ``details.json``: time to accuracy per seed, heterogeneity, per-class accuracy."""
    metric = details.get("metric", "accuracy")
    thr = [f"{x:g}" for x in details.get("thresholds", [])]
    out = [
        "",
        f"Time to 95 % of the final {metric} (virtual s, per seed; round in brackets)"
        + (f" and to the fixed levels {', '.join(thr)}" if thr else "")
        + ":",
        "",
        "| variant | final per seed | t95 per seed | "
        + " | ".join(f"t({x})" for x in thr)
        + (" |" if thr else "|"),
        "|---|---|---|" + "---|" * len(thr),
    ]
    for label, vd in details["variants"].items():
        seeds = vd["seeds"]
        finals = " / ".join("—" if x["final"] is None else f"{x['final']:.3f}" for x in seeds)
        t95 = " / ".join(f"{_fmt_t(x['t95'])} [{x['round95']}]" for x in seeds)
        cells = [" / ".join(_fmt_t(x["thresholds"].get(k)) for x in seeds) for k in thr]
        out.append(f"| {label} | {finals} | {t95} | " + " | ".join(cells) + (" |" if cells else ""))
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
    lines = [
        f"| variant | final {metric} (mean ± 95% CI) | best mean | round | time (s) | seeds |",
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
    if details and details.get("variants"):
        lines.append(details_report(details))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hgo-experiment", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario (a packaged name such as fig5, or a path to a TOML file)")
    r.add_argument("scenario", help="scenario name (fig3..fig8) or path to a TOML file")
    r.add_argument("--mode", choices=("sim", "net"), default="sim")
    r.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scenario's)")
    r.add_argument("--out", type=Path, default=None, help="output directory (default results/NAME[-quick])")
    r.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    r.add_argument("--quick", action="store_true", help="use the scenario's reduced [quick] setting")
    sub.add_parser("list", help="list the packaged scenarios")
    rep = sub.add_parser("report", help="markdown table of the final values in a run's summary.csv")
    rep.add_argument("out", type=Path, help="an output directory of 'run'")
    rep.add_argument("--metric", default="accuracy")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for p in sorted(SCENARIOS.glob("*.toml")):
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
            print(f"{p.stem:8s} {doc.get('title', '')}")
        return 0
    if args.cmd == "report":
        try:
            det_path = args.out / "details.json"
            det = json.loads(det_path.read_text(encoding="utf-8")) if det_path.is_file() else None
            print(report(read_summary(args.out / "summary.csv"), args.metric, details=det))
        except (OSError, ValueError, KeyError) as exc:
            print(f"hgo-experiment: cannot read the summary of {args.out}: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        sc = load_scenario(args.scenario, quick=args.quick, rounds=args.rounds, seeds=args.seeds)
    except (ValueError, FileNotFoundError) as exc:  # ScenarioError is a ValueError
        print(f"hgo-experiment: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / (sc.name + ("-quick" if args.quick else "") + f"-{args.mode}")
    from hgo_common.plugins import PluginError

    try:
        run_scenario(sc, out, mode=args.mode)
    except PluginError as exc:  # a plug-in model that fails its probe on the real data width
        print(f"hgo-experiment: {sc.path}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
