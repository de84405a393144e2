"""Scenario files of ``hgo-experiment``: the schema, reading and validation, and the
per-seed configuration of a variant (Boubouh et al., SRDS 2022, §6: one curve per variant,
several seeds per curve).

A scenario is a TOML file with a shared ``[base]`` configuration (the fields of
:class:`hgo_lab.simulator.SimConfig`), one ``[[variant]]`` table per curve, a number of
``seeds`` and optional ``[quick]`` overrides; see :mod:`hgo_lab.experiment`.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgo_lab import simulator
from hgo_server.config import parse_duration_ms

# The scenario files ship inside the package (package data), so `hgo-experiment list` and
# `run fig5` work from any directory after a plain `pip install`.
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
# In a source checkout, the directory that holds the package (where ../shared sits beside it).
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent
METRICS = ("accuracy", "loss")


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
