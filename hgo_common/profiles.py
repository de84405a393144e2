"""Hardware profiles (weak / average / powerful), their rate distributions and mixes.

HGO (Boubouh et al., SRDS 2022, §4.2 and §6) models worker i's hardware by one number,
its compute rate λ_i in *partial derivatives per millisecond per data point*: in a round of
τ ms with mini-batch size s_i it computes ``b_i = min(λ_i·τ / s_i, d)`` coordinates of its
gradient (see :mod:`hgo_common.throttle`). A profile draws λ_i once, from a normal
distribution around the profile's mean.

Rate models
-----------
Two named rate models (``RATE_MODELS``); both are read as N(mean, std), std not variance.

``"hgo"`` (the default, used by ``hgo-worker --profile``): our own choice of numbers,
chosen so that the MLP (d = 23,860) at τ = 60 ms, s = 32 is strongly heterogeneous. The
paper gives no rates and the authors' code does not hold these; they are ours.

=========  ======  ======  ===========================================================
profile    mean    std     prefix at MLP d = 23,860, τ = 60 ms, s = 32 (``fixed`` policy)
=========  ======  ======  ===========================================================
weak          500     250  500·60/32 = 937.5 → 937 coordinates ≈ 3.9 % of d
average    10,000   2,500  10,000·60/32 = 18,750 ≈ 78.6 % of d
powerful   50,000   5,000  50,000·60/32 = 93,750 > d → the full gradient (all 23,860)
=========  ======  ======  ===========================================================

With logistic regression on MNIST (d = 785) the same rates give a weak worker
500·60/32 = 937 > d coordinates: heterogeneity does not engage there.

``"authors"``: the rates of the authors' public code (repository ``karimboubouh/HgO``):
``src/config.py`` sets ``WEAK_DEVICE = 100``, ``AVERAGE_DEVICE = 1000``,
``POWERFUL_DEVICE = 100000``, and ``src/utils.py`` ``dynamic_lambda`` draws each worker's
λ as ``int(np.random.normal(MEAN, STD))`` with STD 20, 100 and 500 respectively.

=========  ========  =====
profile    mean      std
=========  ========  =====
weak           100     20
average      1,000    100
powerful   100,000    500
=========  ========  =====

In that code λ is a budget in partial derivatives per time unit for the *whole* round:
``src/network.py`` ``Worker.get_block_coordinates_first`` spends λ·τ on coordinates ×
data points (see :mod:`hgo_common.budget`, policy ``coordinates-first``). That is the
unit our rates already have (partial derivatives per ms, each at one data point, so
``b·s <= λ·τ``), with the authors' "time unit" read as our millisecond. The authors'
draw truncates to an integer (``int(...)``); :func:`draw_rate` does the same for this
model. Their mix gives ``ceil(n·fraction)`` workers to each profile (``dynamic_lambda``);
:func:`counts` rounds by largest remainder instead (equal for the mixes used here at
n = 50 and 100).

"Powerful" is throttled like the others (its rate is drawn the same way); it only behaves
as unthrottled when its prefix exceeds d, which it does in the default experiment. To run a
truly unthrottled worker pass ``--rate 0`` (``rate <= 0`` or ``inf`` means unthrottled in
:mod:`hgo_common.throttle`).

Truncation: a normal draw can be small or negative (weak: P(N(500, 250) < 0) ≈ 2.3 %),
so :func:`draw_rate` clamps the draw below at ``FLOOR_FRACTION · mean`` (5 % of the mean; ``"hgo"``:
25 for weak, which about 2.9 % of weak draws hit; 3.8 std below the mean for average,
9.5 for powerful, so practically never; ``"authors"``: 4.75 std and more below every
mean, so never in practice). We clamp rather than resample so that every call
consumes exactly one normal variate from the generator, which keeps streams of draws
aligned across runs and mixes.

Mixes
-----
Fractions (weak, average, powerful) of the n workers. ``default`` is the paper's 30/40/30.
The paper's Figure 8 compares configurations from all-weak to all-powerful; ``C_min`` is
its "10 % powerful, the rest weak". The intermediate ``C_1..C_3`` are our reading of that
figure (the paper does not tabulate them): progressively more capable hardware,

* ``C_weak``     (1.0, 0.0, 0.0)
* ``C_min``      (0.9, 0.0, 0.1)
* ``C_1``        (0.6, 0.3, 0.1)
* ``C_2``        (0.4, 0.4, 0.2)
* ``C_3``        (0.2, 0.4, 0.4)
* ``C_powerful`` (0.0, 0.0, 1.0)

:func:`assign` turns a mix into a deterministic list of n profile names (largest
remainder rounding, ordered weak, average, powerful).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "AUTHORS_PROFILES",
    "FLOOR_FRACTION",
    "MIXES",
    "PROFILES",
    "PROFILE_NAMES",
    "RATE_MODELS",
    "Profile",
    "assign",
    "counts",
    "draw_rate",
    "draw_rates",
    "parse_mix",
]


@dataclass(frozen=True)
class Profile:
    """A hardware profile: λ ~ N(mean, std²), clamped below at ``FLOOR_FRACTION * mean``.

    Attributes
    ----------
    name : str
    mean : float
        Mean rate, partial derivatives per ms per data point.
    std : float
        Standard deviation of the rate (same unit).
    """

    name: str
    mean: float
    std: float

    @property
    def floor(self) -> float:
        """Smallest rate :func:`draw_rate` returns for this profile."""
        return FLOOR_FRACTION * self.mean


FLOOR_FRACTION = 0.05

PROFILE_NAMES: tuple[str, str, str] = ("weak", "average", "powerful")

PROFILES: dict[str, Profile] = {
    "weak": Profile("weak", 500.0, 250.0),
    "average": Profile("average", 10_000.0, 2_500.0),
    "powerful": Profile("powerful", 50_000.0, 5_000.0),
}

# The authors' code: src/config.py (means), src/utils.py dynamic_lambda (std 20 / 100 / 500).
AUTHORS_PROFILES: dict[str, Profile] = {
    "weak": Profile("weak", 100.0, 20.0),
    "average": Profile("average", 1_000.0, 100.0),
    "powerful": Profile("powerful", 100_000.0, 500.0),
}

RATE_MODELS: dict[str, dict[str, Profile]] = {"hgo": PROFILES, "authors": AUTHORS_PROFILES}

MIXES: dict[str, tuple[float, float, float]] = {
    "default": (0.3, 0.4, 0.3),
    "C_weak": (1.0, 0.0, 0.0),
    "C_min": (0.9, 0.0, 0.1),
    "C_1": (0.6, 0.3, 0.1),
    "C_2": (0.4, 0.4, 0.2),
    "C_3": (0.2, 0.4, 0.4),
    "C_powerful": (0.0, 0.0, 1.0),
}


def _rate_model(model: str) -> dict[str, Profile]:
    try:
        return RATE_MODELS[model]
    except (KeyError, TypeError):
        raise ValueError(f"unknown rate model {model!r}; expected one of {list(RATE_MODELS)}") from None


def _profile(name: str, model: str = "hgo") -> Profile:
    table = _rate_model(model)
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown profile {name!r}; expected one of {list(table)}") from None


def draw_rate(name: str, rng: np.random.Generator, model: str = "hgo") -> float:
    """Draw a compute rate λ for profile ``name`` under rate model ``model``.

    One normal variate ``rng.normal(mean, std)``, clamped below at ``FLOOR_FRACTION * mean``;
    truncated to an integer for ``model="authors"`` as the authors' ``dynamic_lambda`` does.

    Parameters
    ----------
    name : str
        "weak", "average" or "powerful".
    rng : numpy.random.Generator
        Source of randomness (consumes exactly one normal variate).
    model : str
        A key of :data:`RATE_MODELS`: ``"hgo"`` (default) or ``"authors"``.

    Returns
    -------
    float
        λ > 0, partial derivatives per ms per data point.
    """
    p = _profile(name, model)
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    x = float(max(p.floor, rng.normal(p.mean, p.std)))
    return float(math.floor(x)) if model == "authors" else x


def draw_rates(names: Sequence[str], rng: np.random.Generator, model: str = "hgo") -> list[float]:
    """One :func:`draw_rate` per name, in order (one normal variate each)."""
    _rate_model(model)
    return [draw_rate(p, rng, model) for p in names]


def parse_mix(mix: str | Sequence[float]) -> tuple[float, float, float]:
    """Validate a mix given by name (a key of :data:`MIXES`) or as three fractions.

    Also accepts a string "a,b,c" (e.g. from a CLI flag).

    Raises
    ------
    ValueError
        Unknown name, not three numbers, a negative or non-finite fraction, or a sum
        farther than 1e-9 from 1.
    """
    if isinstance(mix, str):
        if mix in MIXES:
            return MIXES[mix]
        if "," not in mix:
            raise ValueError(f"unknown mix {mix!r}; expected one of {list(MIXES)} or 'weak,average,powerful'")
        try:
            values = [float(x) for x in mix.split(",")]
        except ValueError:
            raise ValueError(f"mix {mix!r}: expected three numbers 'weak,average,powerful'") from None
    else:
        try:
            values = [float(x) for x in mix]
        except (TypeError, ValueError):
            raise ValueError(f"mix {mix!r}: expected three fractions (weak, average, powerful)") from None
    if len(values) != 3:
        raise ValueError(f"mix {mix!r}: expected three fractions weak, average, powerful; got {len(values)}")
    if any(not math.isfinite(x) or x < 0 for x in values):
        raise ValueError(f"mix {mix!r}: fractions must be finite and >= 0")
    if abs(math.fsum(values) - 1.0) > 1e-9:
        raise ValueError(f"mix {mix!r}: fractions must sum to 1, got {math.fsum(values)!r}")
    return (values[0], values[1], values[2])


def counts(n: int, mix: str | Sequence[float]) -> tuple[int, int, int]:
    """Number of weak, average and powerful workers among n for ``mix``.

    Largest-remainder rounding (Hamilton): each profile gets ``floor(n·p)``, and the
    leftover workers go to the largest fractional parts, ties to the earlier profile in
    the order weak, average, powerful. Deterministic; sums to n.
    """
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    n = int(n)
    fr = parse_mix(mix)
    exact = [n * p for p in fr]
    base = [math.floor(x + 1e-9) for x in exact]  # 1e-9: n*0.3 can be 2.9999999999999996
    rema = [x - b for x, b in zip(exact, base, strict=True)]
    left = n - sum(base)
    # sorted() is stable, so equal remainders keep the weak < average < powerful order.
    for i in sorted(range(3), key=lambda j: -rema[j])[:left]:
        base[i] += 1
    return (base[0], base[1], base[2])


def assign(n: int, mix: str | tuple[float, float, float]) -> list[str]:
    """Profile names for n workers: ``counts(n, mix)`` of each, in the order weak, average, powerful.

    ``assign(10, "default") == ["weak"] * 3 + ["average"] * 4 + ["powerful"] * 3``.
    """
    c = counts(n, mix)
    return [name for name, k in zip(PROFILE_NAMES, c, strict=True) for _ in range(k)]
