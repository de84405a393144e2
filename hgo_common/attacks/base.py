"""The types of the attack registry: :class:`Attack`, :class:`Param`, the coercers the
attack modules share, and :func:`register`. Attack modules import from here, never from
the package, so that the package imports every attack module at import time without a
cycle (``hgo_common.registry``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hgo_common.errors import SpecError

from ..registry import Registry

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

#: Built-in attacks, and the plug-ins loaded so far (probed by the package's adapter).
REGISTRY: Registry[Attack] = Registry("attack")


def register(attack: Attack) -> Attack:
    """Add ``attack`` to the registry (each module calls this once per attack)."""
    if attack.kind not in KINDS:
        raise ValueError(f"attack {attack.name!r}: kind {attack.kind!r} not in {KINDS}")
    if attack.honest_view not in HONEST_VIEWS:
        raise ValueError(f"attack {attack.name!r}: honest_view {attack.honest_view!r} not in {HONEST_VIEWS}")
    return REGISTRY.add(attack.name, attack)
