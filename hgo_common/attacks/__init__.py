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

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hgo_common.errors import SpecError

from .. import plugins

__all__ = [
    "Attack",
    "AttackKindError",
    "Param",
    "get",
    "names",
    "parse_params",
    "register",
]

Kind = Literal["gradient", "data", "silent"]
KINDS: tuple[str, ...] = ("gradient", "data", "silent")
HonestView = Literal["full", "prefix"]
HONEST_VIEWS: tuple[str, ...] = ("full", "prefix")

GradientFn = Callable[..., np.ndarray]
LabelFn = Callable[..., np.ndarray]


class AttackKindError(SpecError):
    """An attack was used as a kind it is not (e.g. ``silent`` called for a gradient)."""


@dataclass(frozen=True)
class Param:
    """A declared attack parameter.

    ``coerce`` maps a raw value (from :func:`parse_params` or Python) to the typed value,
    raising ValueError with a message that says what was expected.
    """

    name: str
    default: Any
    coerce: Callable[[Any], Any]
    help: str = ""


@dataclass(frozen=True)
class Attack:
    """A named attack; see the package docstring for how each kind is used.

    ``honest_view`` says which honest values an omniscient attacker is given:
    ``"full"`` (default) every honest worker's gradient on all the coordinates asked
    for; ``"prefix"`` the same matrix with NaN past each honest worker's own prefix,
    which is what the HGO authors' server holds when its Byzantine workers attack
    (``karimboubouh/HgO`` ``src/utils.py`` ``fill_array``). The simulator pads the rows
    for ``"prefix"`` attacks; on the wire an attacker only has its own full estimates.
    """

    name: str
    kind: Kind
    summary: str
    params: tuple[Param, ...] = ()
    fn: GradientFn | None = field(default=None, repr=False)
    labels_fn: LabelFn | None = field(default=None, repr=False)
    honest_view: HonestView = "full"

    def param_names(self) -> list[str]:
        """Names of the parameters this attack accepts."""
        return [p.name for p in self.params]

    def defaults(self) -> dict[str, Any]:
        """The default value of every declared parameter."""
        return {p.name: p.default for p in self.params}

    def resolve(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overridden by ``params``, each value checked and typed.

        Raises
        ------
        ValueError
            A parameter this attack does not declare, or a bad value (the message names
            the attack, the parameter and the value).
        """
        declared = {p.name: p for p in self.params}
        unknown = [k for k in params if k not in declared]
        if unknown:
            raise ValueError(
                f"attack {self.name!r} has no parameter {unknown[0]!r}; "
                f"accepted: {sorted(declared) if declared else 'none'}"
            )
        out = self.defaults()
        for key, raw in params.items():
            try:
                out[key] = declared[key].coerce(raw)
            except ValueError as exc:
                raise ValueError(f"attack {self.name!r}, parameter {key}={raw!r}: {exc}") from None
        return out

    def __call__(
        self, honest: np.ndarray, *, n: int, f: int, rng: np.random.Generator, **params: Any
    ) -> np.ndarray:
        """The k-vector a Byzantine worker sends instead of its gradient.

        Parameters
        ----------
        honest : ndarray, shape (m, k) or (k,)
            Honest gradient estimates on the k coordinates to send; a 1-D array is one row.
        n, f : int
            Number of workers and of Byzantine workers (ALIE's z depends on them).
        rng : numpy.random.Generator
            Randomness for stochastic attacks.
        **params
            The attack's declared parameters (see ``attack.params``).

        Returns
        -------
        ndarray, shape (k,), float64
        """
        if self.kind != "gradient" or self.fn is None:
            raise AttackKindError(f"attack {self.name!r} is of kind {self.kind!r}, not a gradient attack")
        x = _check_honest(honest, self.name)
        _check_nf(n, f, self.name)
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"attack {self.name!r}: rng must be a numpy.random.Generator, got {rng!r}")
        out = self.fn(x, n=int(n), f=int(f), rng=rng, **self.resolve(params))
        return np.asarray(out, dtype=np.float64).reshape(x.shape[1])

    def transform_labels(
        self, y: np.ndarray, n_classes: int, rng: np.random.Generator, **params: Any
    ) -> np.ndarray:
        """Poisoned labels for a data attack.

        Parameters
        ----------
        y : ndarray, shape (N,)
            Class ids in ``[0, n_classes)`` (classification) or real values (regression).
        n_classes : int
            Number of classes; 0 for regression.
        rng : numpy.random.Generator

        Returns
        -------
        ndarray, shape (N,), same dtype as ``y``
        """
        if self.kind != "data" or self.labels_fn is None:
            raise AttackKindError(f"attack {self.name!r} is of kind {self.kind!r}, not a data attack")
        return self.labels_fn(np.asarray(y), n_classes, rng, **self.resolve(params))


def _check_honest(honest: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(honest, dtype=np.float64)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(
            f"attack {name!r}: honest must be an (m x k) array with m >= 1, got shape {np.shape(honest)}"
        )
    return x


def _check_nf(n: int, f: int, name: str) -> None:
    for label, v in (("n", n), ("f", f)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"attack {name!r}: {label} must be an integer, got {v!r}")
    if n < 1 or f < 0 or f > n:
        raise ValueError(f"attack {name!r}: need n >= 1 and 0 <= f <= n, got n={n}, f={f}")


# ---- parameter coercion helpers shared by the attack modules --------------------------


def real(
    *, positive: bool = False, nonnegative: bool = False, finite: bool = True, optional: bool = False
) -> Callable[[Any], Any]:
    """A coercer to float with the given constraints (``optional``: None allowed)."""

    def coerce(v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ValueError("expected a number" + (" or none" if optional else ""))
        x = float(v)
        if math.isnan(x) or (finite and math.isinf(x)):
            raise ValueError("expected a finite number")
        if positive and not x > 0:
            raise ValueError("expected a number > 0")
        if nonnegative and not x >= 0:
            raise ValueError("expected a number >= 0")
        return x

    return coerce


# ---- registry --------------------------------------------------------------------------

_ATTACKS: dict[str, Attack] = {}


def register(attack: Attack) -> Attack:
    """Add ``attack`` to the registry (each module calls this once per attack)."""
    if attack.kind not in KINDS:
        raise ValueError(f"attack {attack.name!r}: kind {attack.kind!r} not in {KINDS}")
    if attack.honest_view not in HONEST_VIEWS:
        raise ValueError(f"attack {attack.name!r}: honest_view {attack.honest_view!r} not in {HONEST_VIEWS}")
    if attack.name in _ATTACKS:
        raise ValueError(f"attack {attack.name!r} registered twice")
    _ATTACKS[attack.name] = attack
    return attack


def names() -> list[str]:
    """Names of all attacks, sorted."""
    _load_all()
    return sorted(_ATTACKS)


def get(name: str) -> Attack:
    """The attack called ``name``.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    _load_all()
    if isinstance(name, str) and name in _ATTACKS:
        return _ATTACKS[name]
    if isinstance(name, str) and name in _PLUGINS:  # loaded and probed once per process
        return _PLUGINS[name]
    if isinstance(name, str) and (plugins.is_reference(name) or name in plugins.entry_points("attack")):
        return _plugin(name)
    raise plugins.PluginMissing(
        f"unknown attack {name!r}; expected one of {sorted(_ATTACKS)}, a 'package.module:Name' "
        "reference or an installed plug-in (hgo-plugins lists them)",
        str(name),
    )


_PLUGINS: dict[str, Attack] = {}


def _plugin(name: str) -> Attack:
    """Load and probe the plug-in attack ``name`` once."""
    if name in _PLUGINS:
        return _PLUGINS[name]
    obj, _ = plugins.load("attack", name)
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
    _PLUGINS[name] = obj
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


_LOADED = False


def _load_all() -> None:
    # Lazy imports so that registration happens once and the modules can import this one.
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import alie, foe, label_flip, silent, simple  # noqa: F401
