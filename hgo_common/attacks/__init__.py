"""Byzantine attacks shipped for evaluation, by name (docs/design.md §4).

Three kinds:

* ``"gradient"``: the Byzantine worker replaces the values it sends. Call
  ``attack(honest, n=n, f=f, rng=rng, **params)`` with ``honest`` an (m x k) matrix of
  honest gradient estimates on the k coordinates to send (omniscient simulator: the true
  honest gradients; on the wire: the Byzantine worker's own mini-batch gradients from its
  shard) and send the returned k-vector.
* ``"data"``: the worker computes honest gradients on poisoned data; call
  ``attack.transform_labels(y, n_classes, rng)`` once on its shard's labels.
* ``"silent"``: the worker sends nothing (crash / silence); it never calls the attack.

Each attack declares its parameters with defaults (``attack.params``); an unknown parameter
raises ValueError naming it and the accepted ones. ``parse_params`` turns the CLIs'
``--attack-param KEY=VALUE`` items into a typed dict::

    a = attacks.get("alie-baruch")
    v = a(honest, n=50, f=24, rng=np.random.default_rng(0), **attacks.parse_params(["z=1.5"]))

A name that is not registered may be a plug-in (``hgo_common.plugins``): a reference
``package.module:Name`` or an entry point of group ``hgo.attacks``, resolving to an
:class:`Attack` (the built-ins' type). On first use a gradient attack is called once on
a small random matrix and a data attack on a few labels: an exception or a wrong output
shape raises ``PluginError`` naming the plug-in (non-finite values are allowed: sending
NaN is an attack).

Every attack lives in a module whose docstring cites the source it follows (a paper, or
the HGO authors' code at a named commit) and gives the exact formula: :mod:`.alie`
(``alie-baruch``, ``alie-hgo-paper``, ``alie-authors``, ``alie-authors-nan``; ``alie`` is a
deprecated alias of ``alie-baruch``), :mod:`.foe` (``foe``, ``foe-authors``),
:mod:`.simple` (sign-flip, gaussian, large-value, nan),
:mod:`.label_flip`, :mod:`.silent`. Calling an attack of the wrong kind (a data or silent
attack as a gradient attack, or the converse) raises :class:`AttackKindError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .. import plugins
from . import alie, foe, label_flip, silent, simple  # noqa: F401  (each registers its attacks)
from .base import (
    HONEST_VIEWS,
    KINDS,
    REGISTRY,
    Attack,
    AttackKindError,
    HonestView,
    Kind,
    Param,
    real,
    register,
)

__all__ = [
    "HONEST_VIEWS",
    "KINDS",
    "REGISTRY",
    "Attack",
    "AttackKindError",
    "HonestView",
    "Kind",
    "Param",
    "get",
    "names",
    "parse_params",
    "real",
    "register",
]


def names() -> list[str]:
    """Names of all attacks, sorted."""
    return sorted(REGISTRY.names())


def get(name: str) -> Attack:
    """The attack called ``name`` (built in or a plug-in, loaded and probed once).

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    return REGISTRY.get(
        name,
        unknown=f"unknown attack {name!r}; expected one of {names()}, a 'package.module:Name' "
        "reference or an installed plug-in (hgo-plugins lists them)",
    )


def _adapt(name: str, obj: Any) -> Attack:
    """A loaded plug-in checked to be an Attack of a known kind and probed on small input."""
    if not isinstance(obj, Attack):
        raise plugins.PluginError(
            f"attack {name!r}: expected a hgo_common.attacks.Attack, got {type(obj).__name__}"
        )
    if obj.kind not in KINDS:
        raise plugins.PluginError(f"attack {name!r}: kind {obj.kind!r} not in {KINDS}")
    rng = np.random.default_rng(0)
    try:
        if obj.kind == "gradient":
            if obj.fn is None:
                raise plugins.PluginError(f"attack {name!r} is a gradient attack without fn")
            honest = rng.normal(size=(5, 6))
            out = np.asarray(obj.fn(honest, n=10, f=2, rng=rng, **obj.defaults()))
            if out.shape != (6,):
                raise plugins.PluginError(
                    f"attack {name!r}: on (5 x 6) honest gradients it returned shape {out.shape}, "
                    "expected (6,)"
                )
        elif obj.kind == "data":
            if obj.labels_fn is None:
                raise plugins.PluginError(f"attack {name!r} is a data attack without labels_fn")
            y = np.arange(12) % 3
            out = np.asarray(obj.transform_labels(y, 3, rng))
            if out.shape != y.shape:
                raise plugins.PluginError(
                    f"attack {name!r}: transform_labels on 12 labels returned shape {out.shape}"
                )
    except plugins.PluginError:
        raise
    except Exception as exc:
        raise plugins.PluginError(
            f"attack {name!r}: a trial call raised {type(exc).__name__}: {exc}"
        ) from None
    return obj


def _parse_value(text: str) -> Any:
    # int before float so "eps=10" is 10; "none" maps to None (ALIE's z=none: the formula).
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)  # accepts "inf", "-inf", "nan", "1e6"
    except ValueError:
        return text


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items into a typed dict.

    Values become int when they parse as one, else float (``inf``, ``nan``, ``1e6``
    included), ``None`` for ``none``/``null``, else the string itself.

    >>> parse_params(["z=1.5", "eps=10", "value=inf"])
    {'z': 1.5, 'eps': 10, 'value': inf}

    Raises
    ------
    ValueError
        An item without ``=``, with an empty key, or a key given twice (the message names
        the item).
    """
    if isinstance(items, str):
        raise ValueError(f"parse_params expects a list of KEY=VALUE items, got the string {items!r}")
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"attack parameter {item!r}: expected KEY=VALUE")
        key, _, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not key or not key.replace("-", "_").isidentifier():
            raise ValueError(f"attack parameter {item!r}: bad key {key!r}")
        if key in out:
            raise ValueError(f"attack parameter {item!r}: {key!r} given twice")
        if not text:
            raise ValueError(f"attack parameter {item!r}: empty value")
        out[key] = _parse_value(text)
    return out


REGISTRY.set_adapter(_adapt)
