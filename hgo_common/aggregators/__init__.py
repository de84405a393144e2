"""Robust aggregation rules (AR in the paper) and pre-aggregation steps, by name.

A rule is a pure, vectorized function over an (m x k) float array — m workers'
values on k coordinates — with a keyword ``f`` (the number of Byzantine rows it must
tolerate), returning a k-vector::

    rule = aggregators.get("median")
    out = rule(x, f=2)

Pre-aggregation steps map (m x k) to (m' x k) and compose in front of any rule with
``+``: ``get("nnm+krum")``, ``get("bucketing+median")``. Each rule lives in its own
module whose docstring cites its paper and states the variant implemented.

``Rule.coordinatewise`` says whether coordinate j of the output depends only on
column j of the input; hgo_common.blocks relies on it (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RuleFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Rule:
    """A named aggregation rule; call it as ``rule(x, f=f)``."""

    name: str
    fn: RuleFn
    coordinatewise: bool
    min_rows: Callable[[int], int] = lambda f: 1

    def __call__(self, x: np.ndarray, *, f: int = 0, **kwargs: object) -> np.ndarray:
        x = _check_matrix(x, self.name)
        if f < 0:
            raise ValueError(f"{self.name}: f must be >= 0, got {f}")
        return self.fn(x, f=f, **kwargs)


@dataclass(frozen=True)
class PreAggregation:
    """A named pre-aggregation step mapping (m x k) to (m' x k)."""

    name: str
    fn: RuleFn

    def __call__(self, x: np.ndarray, *, f: int = 0, **kwargs: object) -> np.ndarray:
        return self.fn(_check_matrix(x, self.name), f=f, **kwargs)


_RULES: dict[str, Rule] = {}
_PRE: dict[str, PreAggregation] = {}


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected an (m x k) array with m >= 1, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def register(
    name: str, *, coordinatewise: bool, min_rows: Callable[[int], int] = lambda f: 1
) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register ``fn`` as the aggregation rule ``name``.

    ``min_rows(f)`` is the fewest rows the rule accepts for a given f (Krum: 2f + 3);
    the server uses it to choose a default quorum v.
    """

    def deco(fn: RuleFn) -> RuleFn:
        if name in _RULES or name in _PRE:
            raise ValueError(f"aggregation rule {name!r} registered twice")
        _RULES[name] = Rule(name, fn, coordinatewise, min_rows)
        return fn

    return deco


def register_pre(name: str) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register ``fn`` as the pre-aggregation step ``name``."""

    def deco(fn: RuleFn) -> RuleFn:
        if name in _RULES or name in _PRE:
            raise ValueError(f"pre-aggregation {name!r} registered twice")
        _PRE[name] = PreAggregation(name, fn)
        return fn

    return deco


def names() -> list[str]:
    """Names of the registered aggregation rules (not the pre-aggregation steps)."""
    _load_all()
    return sorted(_RULES)


def pre_names() -> list[str]:
    """Names of the registered pre-aggregation steps."""
    _load_all()
    return sorted(_PRE)


def get(name: str) -> Rule:
    """The rule called ``name``, optionally prefixed by pre-aggregation steps joined by '+'."""
    _load_all()
    parts = [p.strip() for p in name.split("+")]
    *pres, last = parts
    if last not in _RULES:
        raise ValueError(f"unknown aggregation rule {last!r}; expected one of {sorted(_RULES)}")
    for p in pres:
        if p not in _PRE:
            raise ValueError(f"unknown pre-aggregation {p!r} in {name!r}; expected one of {sorted(_PRE)}")
    rule = _RULES[last]
    if not pres:
        return rule
    steps = [_PRE[p] for p in pres]

    def composed(x: np.ndarray, *, f: int = 0, **kwargs: object) -> np.ndarray:
        for step in steps:
            x = step(x, f=f, **kwargs)
        return rule.fn(x, f=f)

    return Rule(name, composed, coordinatewise=False, min_rows=rule.min_rows)


_LOADED = False


def _load_all() -> None:
    # Import the rule modules lazily so that registration happens exactly once and
    # a module that fails to import names itself in the traceback.
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import _rules  # noqa: F401
