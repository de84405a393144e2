"""Scenario files of ``hgo-experiment``: the schema, reading and validation, and the
per-seed configuration of a variant (Boubouh et al., SRDS 2022, §6: one curve per variant,
several seeds per curve).

A scenario is a TOML file with a shared ``[base]`` configuration (the fields of
:class:`hgo_lab.simulator.SimConfig`), one ``[[variant]]`` table per curve, a number of
``seeds`` and optional ``[quick]`` overrides; see :mod:`hgo_lab.experiment`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hgo_common.errors import SpecError
from hgo_common.spec import forms
from hgo_lab import simulator

# The scenario files ship inside the package (package data), so `hgo-experiment list` and
# `run fig5` work from any directory after a plain `pip install`.
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
# In a source checkout, the directory that holds the package (where ../shared sits beside it).
SOURCE_ROOT = Path(__file__).resolve().parent.parent.parent
METRICS = ("accuracy", "loss")


@dataclass
class Variant:
    """One curve of a figure: a label and its simulator configuration (seed 0)."""

    label: str
    config: simulator.SimConfig
    # --mode net only: this variant's own [net] settings, over the scenario's (e.g. a batch size
    # per profile: ``net = { batch_by_profile = { weak = 1 } }``)
    net: dict[str, Any] = field(default_factory=dict)

    @property
    def rate_model(self) -> str:
        return self.config.rate_model

    @property
    def quorum(self) -> int | str | None:
        """What the file said for v: an integer, ``"auto"`` or None (the default)."""
        return self.config.v.to_value()


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
    first_seed: int = 0
    """Seed index of the first run (``--first-seed``): seeds ``first_seed .. first_seed + seeds - 1``,
    so a re-run with new seeds (10-19 after the files' 0-9) needs no edit of the file."""

    @property
    def seed_indices(self) -> range:
        """The seed indices this scenario runs (each variant's seed + index: :func:`seed_config`)."""
        return range(self.first_seed, self.first_seed + self.seeds)


class ScenarioError(SpecError):
    """A scenario file is unreadable or wrong; the message names the file and the problem."""


# The keys a scenario file may hold besides the run's settings, with their TOML types.
_TOP_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "title": str, "claim": str, "metric": str, "seeds": int, "notes": list,
    "base": dict, "quick": dict, "variant": list, "net": dict, "thresholds": list, "reference": bool,
    "format": int,
}  # fmt: skip
_QUICK_KEYS: dict[str, type | tuple[type, ...]] = {"base": dict, "seeds": int}
_NET_KEYS: dict[str, type | tuple[type, ...]] = {
    "max_workers": int, "processes": int, "min_tau_ms": (int, float),
    # real device constraints (hgo_lab.constraints, issue 21): {profile = {cpu_share = .., uplink = ..}}
    "limits": dict, "throttle": str, "batch_by_profile": dict, "server_args": list,
    "per_class": bool,  # export each run's model and report the test accuracy per class
    "only": bool,  # the scenario means something only over the wire: --mode sim refuses it
}  # fmt: skip
_VARIANT_NET_KEYS = ("throttle", "batch_by_profile", "server_args", "limits")
_TOML_TYPE = {str: "a string", int: "an integer", list: "an array", dict: "a table", bool: "a boolean"}
FORMATS = (1, 2)
"""Scenario formats. 2: the keys are the run specification's (``hgo_common.spec``: ``f`` is
the tolerated f, ``attackers`` the Byzantine workers present, ``tau`` the deadline).
1 (files without ``format``): the keys of before the spec, read as they were meant — ``f``
the attackers present (and the tolerated f unless ``rule_f`` says otherwise), ``tau_ms``
the deadline, ``tau_auto = true`` with ``tau_ms`` its upper bound, and rounds of exactly
tau unless ``early_close`` is set (the simulator's old default), and no safety refusal
(``allow_unsafe``: the files were written before the check and mean what they say), and the
row bound of their time, ``coord:1e6`` (the default is now relative: ``median-norm:10``)."""


def _check_table(table: dict[str, Any], keys: dict[str, type | tuple[type, ...]], where: str) -> None:
    """Unknown keys and values of the wrong TOML type in a fixed-schema table."""
    for key, value in table.items():
        if key not in keys:
            raise ValueError(f"{where}: unknown key {key!r}; expected one of {sorted(keys)}")
        want = keys[key]
        if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
            what = _TOML_TYPE.get(want, str(want)) if isinstance(want, type) else str(want)
            raise ValueError(f"{where}: {key!r} must be {what}, got {value!r}")


def _table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected a table of settings, got {table!r}")
    return dict(table)


_FORMAT_1_KEYS = {"f": "attackers", "rule_f": "f", "tau_ms": "tau"}


def _check_layer(table: Any, where: str, fmt: int) -> dict[str, Any]:
    """One settings table on its own: known keys and values of the right kind, named with ``where``."""
    t = _table(table, where)
    probe = dict(t)
    if fmt == 1:
        if "tau_auto" in probe and not isinstance(probe.pop("tau_auto"), bool):
            raise ValueError(f"{where}: 'tau_auto' must be true or false, got {t['tau_auto']!r}")
        probe = {_FORMAT_1_KEYS.get(k, k): v for k, v in probe.items()}
    forms.coerce(simulator.SimConfig, probe, where=f"{where}: ", flags=False)
    return t


def _from_format_1(merged: dict[str, Any]) -> dict[str, Any]:
    """Format-1 keys of a merged variant as the run specification's (see :data:`FORMATS`)."""
    out = dict(merged)
    if "f" in out:
        out["attackers"] = out.pop("f")
        out.setdefault("f", out["attackers"])
    if "rule_f" in out:
        out["f"] = out.pop("rule_f")
    if "tau_ms" in out:
        out["tau"] = out.pop("tau_ms")
    if out.pop("tau_auto", False):
        out["tau_max"] = out.get("tau", 1000.0)
        out["tau"] = "auto"
    out.setdefault("early_close", False)
    # Format 1 predates the safety check (issue 20): its files meant what they said.
    out.setdefault("allow_unsafe", True)
    # ... and the relative row bound: their rows were clipped only per coordinate at 1e6
    # (so the published numbers re-run unchanged; format 2 takes the new default).
    out.setdefault("row_bound", "coord:1e6")
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
    from hgo_common import catalog

    catalog.check("dataset", cfg.dataset)
    if cfg.model is not None:
        catalog.check("model", cfg.model)
    catalog.check("rule", cfg.rule)
    if cfg.attack:
        catalog.check("attack", cfg.attack)


def _build_scenario(
    doc: dict[str, Any], path: Path, *, quick: bool, rounds: int | None, seeds: int | None
) -> Scenario:
    _check_table(doc, _TOP_KEYS, "top level")
    _check_table(doc.get("quick", {}), _QUICK_KEYS, "[quick]")
    _check_table(doc.get("net", {}), _NET_KEYS, "[net]")
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
    fmt = doc.get("format", 1)
    if fmt not in FORMATS:
        raise ValueError(f"'format' must be one of {list(FORMATS)}, got {fmt!r}")
    base = _check_layer(doc.get("base", {}), "[base]", fmt)
    quick_over = _check_layer(doc.get("quick", {}).get("base", {}), "[quick.base]", fmt) if quick else {}
    variants: list[Variant] = []
    for j, vt in enumerate(raw_variants):
        vt = dict(vt)
        label = vt.pop("label", f"variant{j}")
        if not isinstance(label, str):
            raise ValueError(f"variant {j}: 'label' must be a string, got {label!r}")
        net_v = vt.pop("net", {})
        if not isinstance(net_v, dict):
            raise ValueError(f"variant {label!r}: 'net' must be a table, got {net_v!r}")
        _check_table(net_v, {k: _NET_KEYS[k] for k in _VARIANT_NET_KEYS}, f"variant {label!r} net")
        quick_v = _check_layer(vt.pop("quick", {}), f"variant {label!r} quick", fmt)
        vt = _check_layer(vt, f"variant {label!r}", fmt)
        merged = {**base, **vt, **quick_over, **(quick_v if quick else {})}
        if fmt == 1:
            merged = _from_format_1(merged)
        if rounds is not None:
            merged["rounds"] = rounds
        merged["data_dir"] = _resolve_data_dir(merged.get("data_dir"), path)
        try:
            config = simulator.SimConfig(**forms.coerce(simulator.SimConfig, merged, flags=False))
            _check_plugins(config)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"variant {label!r}: {exc}") from None
        variants.append(Variant(label, config, dict(net_v)))
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


def seed_config(var: Variant, s: int) -> simulator.SimConfig:
    """The configuration of seed index ``s`` of ``var``: its seed + s (the rates, placement and
    worker seeds follow from the seed: ``hgo_common.spec.devices``)."""
    return simulator.with_overrides(var.config, seed=var.config.seed + s)
