"""Robust aggregation rules (AR in the paper) and pre-aggregation steps, by name.

A rule is a pure, vectorized function over an (m x k) float array — m workers'
values on k coordinates — with a keyword ``f`` (the number of Byzantine rows it must
tolerate), returning a k-vector (float64)::

    rule = aggregators.get("median")
    out = rule(x, f=2)

Pre-aggregation steps map (m x k) to (m' x k) and compose in front of any rule with
``+``: ``get("nnm+krum")``, ``get("bucketing+median")``. Each rule lives in its own
module whose docstring cites its paper and states the variant implemented; the user
documentation is docs/aggregators.md.

``Rule.coordinatewise`` says whether coordinate j of the output depends only on
column j of the input; hgo_common.blocks relies on it (see there).

Preconditions
-------------
``Rule.min_rows(f)`` is the fewest rows a rule accepts for a given f (Krum: 2f + 3);
calling a rule with fewer rows, a negative or non-integer f, or a non-(m x k) array
raises ValueError naming the values. A composed rule's ``min_rows`` accounts for the
pre-aggregation steps in front of it (bucketing with s = 2 halves the rows).

Non-finite inputs
-----------------
Rules do not scan for NaN/inf (that would cost a full pass on the server's hot path):
with non-finite inputs the output is unspecified (NaN may propagate or rows may be
chosen arbitrarily). The server never passes them: the collector truncates a
worker's prefix before its first non-finite value (hgo_common.collector), and
hgo_common.blocks only reads prefixes.

Plug-ins
--------
A name that is not registered may be a plug-in (``hgo_common.plugins``): a reference
``package.module:Name`` or an entry point of group ``hgo.rules``, resolving to a
:class:`Rule` (build one with :func:`make_rule`), a :class:`PreAggregation`, or a plain
function ``fn(x, *, f) -> (k,)`` (taken as not coordinatewise, ``min_rows(f) = 1``). It
composes with ``+`` like a built-in (``get("nnm+mypkg.rules:trimmed")``). On first use
it is run once on a small random matrix; a wrong output shape, a non-finite output or
an exception raises ``PluginError`` naming the plug-in.

Keyword arguments
-----------------
Extra keywords (``trimmed`` rules take none; ``multi-krum`` takes ``n_select``,
``bucketing`` takes ``s`` and ``rng``, ...) are passed to the components of a
composed rule that accept them; a keyword no component accepts raises ValueError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import plugins

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


_RULES: dict[str, Rule] = {}
_PRE: dict[str, PreAggregation] = {}


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
        if name in _RULES or name in _PRE or "+" in name:
            raise ValueError(f"aggregation rule {name!r} registered twice or contains '+'")
        _RULES[name] = make_rule(
            fn, name=name, coordinatewise=coordinatewise, min_rows=min_rows, condition=condition,
            gram_weights=gram_weights,
        )  # fmt: skip
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
        if name in _RULES or name in _PRE or "+" in name:
            raise ValueError(f"pre-aggregation {name!r} registered twice or contains '+'")
        _PRE[name] = PreAggregation(name, fn, rows_needed, _keywords(fn))
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
    """The rule called ``name``, optionally prefixed by pre-aggregation steps joined by '+'.

    Raises
    ------
    ValueError
        For an unknown rule or step; the message lists the registered names.
    """
    _load_all()
    if not isinstance(name, str):
        raise ValueError(f"aggregation rule name must be a string, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    *pres, last = parts
    if last in _RULES:
        rule = _RULES[last]
    elif _pluggable(last):
        rule = _plugin(last, want=Rule)  # type: ignore[assignment]
    else:
        raise plugins.PluginMissing(
            f"unknown aggregation rule {last!r} in {name!r}; expected one of {sorted(_RULES)}"
            f" optionally prefixed by pre-aggregation steps {sorted(_PRE)} joined with '+',"
            " a 'package.module:Name' reference or an installed plug-in (hgo-plugins lists them)",
            last,
        )
    steps: list[PreAggregation] = []
    for p in pres:
        if p in _PRE:
            steps.append(_PRE[p])
        elif _pluggable(p):
            steps.append(_plugin(p, want=PreAggregation))  # type: ignore[arg-type]
        else:
            raise plugins.PluginMissing(
                f"unknown pre-aggregation {p!r} in {name!r}; expected one of {sorted(_PRE)}", p
            )
    if not pres:
        return rule
    accepted = rule.keywords.union(*(s.keywords for s in steps))

    def composed(x: np.ndarray, *, f: int = 0, **kwargs: object) -> np.ndarray:
        # Each component receives the keywords it declares (bucketing: s, rng; ...).
        for step in steps:
            x = step.fn(x, f=f, **{k: v for k, v in kwargs.items() if k in step.keywords})
            if x.shape[0] < rule.min_rows(f):
                cond = rule.condition or f"m >= {rule.min_rows(f)}"
                raise ValueError(
                    f"{name}: after {step.name} {rule.name} needs {cond}, got m={x.shape[0]}, f={f}"
                )
        return rule.fn(x, f=f, **{k: v for k, v in kwargs.items() if k in rule.keywords})

    def min_rows(f: int) -> int:
        need = rule.min_rows(f)
        for step in reversed(steps):
            need = step.rows_needed(f, need)
        return need

    return Rule(name, composed, False, min_rows, "", accepted)


_LOADED = False


def _load_all() -> None:
    # Import the rule modules lazily so that registration happens exactly once and
    # a module that fails to import names itself in the traceback.
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import _rules  # noqa: F401


# ---- plug-ins ---------------------------------------------------------------------------

_PLUGINS: dict[str, Rule | PreAggregation] = {}


def _pluggable(name: str) -> bool:
    return name in _PLUGINS or plugins.is_reference(name) or name in plugins.entry_points("rule")


def _plugin(name: str, *, want: type) -> Rule | PreAggregation:
    """Load, wrap and probe the plug-in rule (or pre-aggregation step) ``name`` once."""
    if name not in _PLUGINS:
        obj, _ = plugins.load("rule", name)
        if isinstance(obj, Rule | PreAggregation):
            loaded: Rule | PreAggregation = obj
        elif callable(obj):
            loaded = make_rule(obj, name=name, coordinatewise=False)
        else:
            raise plugins.PluginError(
                f"rule {name!r}: expected an aggregators.Rule (see make_rule) or a function "
                f"fn(x, *, f) -> (k,), got {type(obj).__name__}"
            )
        _probe(name, loaded)
        _PLUGINS[name] = loaded
    got = _PLUGINS[name]
    if not isinstance(got, want):
        role = "an aggregation rule (last in a '+' chain)" if want is Rule else "a pre-aggregation step"
        raise plugins.PluginError(f"rule {name!r} is a {type(got).__name__}, used here as {role}")
    return got


def _probe(name: str, rule: Rule | PreAggregation) -> None:
    # One call on a small random matrix with the fewest rows the rule claims to accept
    # (plus two), for f = 0 and f = 1: shapes and finiteness, before training starts.
    rng = np.random.default_rng(0)
    k = 7
    for f in (0, 1):
        try:
            need = rule.min_rows(f) if isinstance(rule, Rule) else rule.rows_needed(f, 1)
            if isinstance(need, bool) or not isinstance(need, int | np.integer) or need < 1:
                raise plugins.PluginError(
                    f"rule {name!r}: min_rows({f}) must be an integer >= 1, got {need!r}"
                )
            x = rng.normal(size=(int(need) + 2, k))
            out = np.asarray(rule(x, f=f))
        except plugins.PluginError:
            raise
        except Exception as exc:
            raise plugins.PluginError(
                f"rule {name!r}: a call with f={f} on a random matrix raised {type(exc).__name__}: {exc}"
            ) from None
        expect = (k,) if isinstance(rule, Rule) else None
        if (expect and out.shape != expect) or (not expect and (out.ndim != 2 or out.shape[1] != k)):
            want = f"({k},)" if expect else f"(m', {k})"
            raise plugins.PluginError(
                f"rule {name!r}: on an ({x.shape[0]} x {k}) matrix it returned shape {out.shape}, "
                f"expected {want}"
            )
        if not np.all(np.isfinite(out)):
            raise plugins.PluginError(f"rule {name!r}: returned non-finite values on finite input (f={f})")
