"""The types of the aggregation registry: :class:`Rule`, :class:`PreAggregation`, and the
decorators each rule module registers itself with (``@register``, ``@register_pre``).

Rule modules import from here, never from the package, so that the package can import
every rule module at import time without a cycle (``hgo_common.registry``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..registry import Registry

RuleFn = Callable[..., np.ndarray]


def _one_row(f: int) -> int:
    return 1


def _same_rows(f: int, need: int) -> int:
    return need


@dataclass(frozen=True)
class Rule:
    """A named aggregation rule; call it as ``rule(x, f=f)``.

    Attributes
    ----------
    name : str
    fn : callable
        The raw function ``fn(x, *, f, **kwargs) -> (k,)``; it trusts its input.
    coordinatewise : bool
        Output column j depends only on input column j.
    min_rows : callable
        ``min_rows(f)``: the fewest rows the rule accepts.
    condition : str
        The precondition in the paper's notation, used in error messages.
    gram_weights : callable or None
        For rules whose output is a weighted mean of their rows with weights that depend
        on the rows only through their Gram matrix (Krum, multi-Krum):
        ``gram_weights(g, rows, *, f, **kwargs) -> (m,)`` with ``g`` the (m x m) float64
        Gram matrix and ``rows(idx)`` the rows' values (read only to break exact ties).
        hgo_common.blocks then computes each segment's Gram in place on the round buffer
        instead of copying the segment's rows.
    """

    name: str
    fn: RuleFn
    coordinatewise: bool
    min_rows: Callable[[int], int] = _one_row
    condition: str = ""
    keywords: frozenset[str] = field(default=frozenset())
    gram_weights: RuleFn | None = None

    def __call__(self, x: np.ndarray, *, f: int = 0, **kwargs: object) -> np.ndarray:
        arr = _check_matrix(x, self.name)
        f = _check_f(f, self.name)
        need = self.min_rows(f)
        m = arr.shape[0]
        if m < need:
            cond = self.condition or f"m >= {need}"
            raise ValueError(f"{self.name} needs {cond} (at least {need} rows), got m={m}, f={f}")
        _check_keywords(kwargs, self.keywords, self.name)
        return self.fn(arr, f=f, **kwargs)


@dataclass(frozen=True)
class PreAggregation:
    """A named pre-aggregation step mapping (m x k) to (m' x k).

    ``rows_needed(f, need)``: the fewest input rows for which the step returns at least
    ``need`` rows (with its default parameters).
    """

    name: str
    fn: RuleFn
    rows_needed: Callable[[int, int], int] = _same_rows
    keywords: frozenset[str] = field(default=frozenset())

    def __call__(self, x: np.ndarray, *, f: int = 0, **kwargs: object) -> np.ndarray:
        arr = _check_matrix(x, self.name)
        f = _check_f(f, self.name)
        _check_keywords(kwargs, self.keywords, self.name)
        return self.fn(arr, f=f, **kwargs)


#: Built-in rules and pre-aggregation steps (one namespace), and the plug-ins loaded so far.
REGISTRY: Registry[Rule | PreAggregation] = Registry("rule")


def _check_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise ValueError(f"{name}: expected an (m x k) array with m >= 1, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        # float32 stays float32 (the server's round buffer): no whole-array upcast.
        arr = arr.astype(np.float64)
    return arr


def _check_f(f: object, name: str) -> int:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"{name}: f must be an integer >= 0, got {f!r}")
    return int(f)


def _keywords(fn: RuleFn) -> frozenset[str]:
    params = inspect.signature(fn).parameters.values()
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "f")


def _check_keywords(kwargs: dict[str, object], accepted: frozenset[str], name: str) -> None:
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{name}: unknown keyword(s) {unknown}; accepted: {sorted(accepted)}")


def make_rule(
    fn: RuleFn,
    *,
    name: str | None = None,
    coordinatewise: bool,
    min_rows: Callable[[int], int] = _one_row,
    condition: str = "",
    gram_weights: RuleFn | None = None,
) -> Rule:
    """A :class:`Rule` around ``fn(x, *, f, **keywords) -> (k,)``, without registering it
    (what a plug-in module exports). ``name`` defaults to ``fn.__name__``; the keywords
    ``fn`` accepts are read from its signature. ``gram_weights``: see :class:`Rule`."""
    return Rule(name or fn.__name__, fn, coordinatewise, min_rows, condition, _keywords(fn), gram_weights)


def register(
    name: str,
    *,
    coordinatewise: bool,
    min_rows: Callable[[int], int] = _one_row,
    condition: str = "",
    gram_weights: RuleFn | None = None,
) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register ``fn`` as the aggregation rule ``name``.

    ``min_rows(f)`` is the fewest rows the rule accepts for a given f (Krum: 2f + 3);
    the server uses it to choose a default quorum v. ``condition`` states it in the
    paper's notation for error messages (Krum: ``"m > 2f+2"``).
    """

    def deco(fn: RuleFn) -> RuleFn:
        REGISTRY.add(name, make_rule(
            fn, name=name, coordinatewise=coordinatewise, min_rows=min_rows, condition=condition,
            gram_weights=gram_weights,
        ))  # fmt: skip
        return fn

    return deco


def register_pre(
    name: str, *, rows_needed: Callable[[int, int], int] = _same_rows
) -> Callable[[RuleFn], RuleFn]:
    """Decorator: register ``fn`` as the pre-aggregation step ``name``.

    ``rows_needed(f, need)`` is the fewest input rows for which the step outputs at
    least ``need`` rows (identity for row-preserving steps such as NNM).
    """

    def deco(fn: RuleFn) -> RuleFn:
        REGISTRY.add(name, PreAggregation(name, fn, rows_needed, _keywords(fn)))
        return fn

    return deco
