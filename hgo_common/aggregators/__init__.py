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

from typing import Any

import numpy as np

from .. import plugins
from . import (  # noqa: F401  (every rule module registers itself)
    aksel,
    aksel_coord_authors,
    average,
    bucketing,
    bulyan,
    centered_clipping,
    geometric_median,
    krum,
    krum_coord_authors,
    meamed,
    median,
    multi_krum,
    nan_authors,
    nnm,
    phocas,
    trimmed_mean,
)
from .base import (
    REGISTRY,
    PreAggregation,
    Rule,
    RuleFn,
    make_rule,
    register,
    register_pre,
)

__all__ = [
    "REGISTRY",
    "PreAggregation",
    "Rule",
    "RuleFn",
    "get",
    "make_rule",
    "names",
    "pre_names",
    "register",
    "register_pre",
]


def names() -> list[str]:
    """Names of the registered aggregation rules (not the pre-aggregation steps)."""
    return sorted(n for n, obj in REGISTRY.items() if isinstance(obj, Rule))


def pre_names() -> list[str]:
    """Names of the registered pre-aggregation steps."""
    return sorted(n for n, obj in REGISTRY.items() if isinstance(obj, PreAggregation))


def _component(part: str, want: type, chain: str) -> Any:
    """The built-in or plug-in ``part`` of the rule name ``chain``, as a ``want``."""
    if part in REGISTRY and isinstance(REGISTRY.builtin(part), want):
        return REGISTRY.builtin(part)
    if REGISTRY.pluggable(part):
        got = REGISTRY.plugin(part)
        if not isinstance(got, want):
            role = "an aggregation rule (last in a '+' chain)" if want is Rule else "a pre-aggregation step"
            raise plugins.PluginError(f"rule {part!r} is a {type(got).__name__}, used here as {role}")
        return got
    if want is Rule:
        raise plugins.PluginMissing(
            f"unknown aggregation rule {part!r} in {chain!r}; expected one of {names()}"
            f" optionally prefixed by pre-aggregation steps {pre_names()} joined with '+',"
            " a 'package.module:Name' reference or an installed plug-in (hgo-plugins lists them)",
            part,
        )
    raise plugins.PluginMissing(
        f"unknown pre-aggregation {part!r} in {chain!r}; expected one of {pre_names()}", part
    )


def get(name: str) -> Rule:
    """The rule called ``name``, optionally prefixed by pre-aggregation steps joined by '+'.

    Raises
    ------
    ValueError
        For an unknown rule or step; the message lists the registered names.
    """
    if not isinstance(name, str):
        raise ValueError(f"aggregation rule name must be a string, got {name!r}")
    parts = [p.strip() for p in name.split("+")]
    *pres, last = parts
    rule: Rule = _component(last, Rule, name)
    steps: list[PreAggregation] = [_component(p, PreAggregation, name) for p in pres]
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


# ---- plug-ins ---------------------------------------------------------------------------


def _adapt(name: str, obj: Any) -> Rule | PreAggregation:
    """A loaded plug-in as a Rule or PreAggregation (a plain function becomes a Rule), probed."""
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
    return loaded


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


REGISTRY.set_adapter(_adapt)
