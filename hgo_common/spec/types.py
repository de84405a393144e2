"""Small value types of a run specification: durations, the quorum and the deadline.

A quorum and a deadline each have a few *kinds* (a number, ``auto``, the default; fixed,
infinite, auto). They are values of their own type, never sentinels hidden in an int or
a float, so that code reading them says which kind it handles.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hgo_common.errors import SpecError

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|sec|min)?\s*$")
_UNIT_MS = {None: 1.0, "ms": 1.0, "s": 1000.0, "sec": 1000.0, "min": 60_000.0}
DURATION_HINT = "milliseconds like 60, or 250ms, 2s, 2min, inf"


def flag_of(name: str) -> str:
    """``tau_min`` -> ``--tau-min``: how a setting is spelled on a command line."""
    return "--" + name.replace("_", "-")


def parse_duration_ms(value: object, name: str = "duration") -> float:
    """Milliseconds from ``60``, ``"60"``, ``"250ms"``, ``"2s"``, ``"2min"`` or ``"inf"``.

    Raises SpecError naming ``--name`` and the value for anything else (negative, NaN,
    an unknown unit, a bool).
    """
    if isinstance(value, bool):
        raise SpecError(f"{flag_of(name)}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "infinity", "+inf"):
            return math.inf
        m = _DURATION_RE.match(text)
        if m is None:
            raise SpecError(f"{flag_of(name)}: cannot read {value!r} as a duration; expected {DURATION_HINT}")
        ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        raise SpecError(f"{flag_of(name)}: expected a duration, got {value!r}")
    if math.isnan(ms) or ms < 0:
        raise SpecError(f"{flag_of(name)}: duration must be >= 0 ms or inf, got {value!r}")
    return ms


def duration_text(ms: float) -> str:
    """``60.0`` -> ``"60 ms"``, inf -> ``"inf"``."""
    return "inf" if math.isinf(ms) else f"{ms:g} ms"


QUORUM_AUTO = "auto"


@dataclass(frozen=True)
class Quorum:
    """The quorum v of a run: ``default`` (``rounds.default_quorum``), ``auto`` (the paper's
    ``floor(f/0.5)+1``, ``rounds.auto_quorum``) or a fixed number.

    ``Quorum.parse`` reads ``None``, ``"auto"``, ``"default"`` or an integer >= 1;
    :meth:`resolve` gives the integer for a q, rule and tolerated f.
    """

    kind: str = "default"  # "default" | "auto" | "fixed"
    value: int = 0  # the fixed v (kind "fixed")

    def __post_init__(self) -> None:
        if self.kind not in ("default", "auto", "fixed"):
            raise SpecError(f"quorum kind must be default, auto or fixed, got {self.kind!r}")
        if self.kind == "fixed" and (isinstance(self.value, bool) or self.value < 1):
            raise SpecError(f"--v must be an integer >= 1 or {QUORUM_AUTO!r}, got {self.value!r}")

    @classmethod
    def fixed(cls, v: int) -> Quorum:
        return cls("fixed", int(v))

    @classmethod
    def parse(cls, value: object, name: str = "v") -> Quorum:
        if value is None or isinstance(value, Quorum):
            return value if isinstance(value, Quorum) else cls()
        if isinstance(value, str):
            text = value.strip().lower()
            if text == QUORUM_AUTO:
                return cls("auto")
            if text in ("default", ""):
                return cls()
            if re.fullmatch(r"[+-]?[0-9]+", text):
                value = int(text)
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise SpecError(f"{flag_of(name)} must be in [1, q] or {QUORUM_AUTO!r}, got {value}")
            return cls.fixed(value)
        raise SpecError(f"{flag_of(name)}: expected an integer >= 1 or {QUORUM_AUTO!r}, got {value!r}")

    def resolve(self, q: int, rule: str, f: int) -> int:
        """v as an integer for ``q`` sampled workers, ``rule`` and the tolerated ``f``."""
        from hgo_common import rounds

        if self.kind == "auto":
            return rounds.auto_quorum(q, rule, f)
        if self.kind == "default":
            return rounds.default_quorum(q, rule, f)
        return self.value

    def to_value(self) -> int | str | None:
        """What a TOML file or a scenario says: an integer, ``"auto"``, or nothing (default)."""
        return {"auto": QUORUM_AUTO, "default": None}.get(self.kind, self.value)

    def __str__(self) -> str:
        return str(self.value) if self.kind == "fixed" else self.kind


@dataclass(frozen=True)
class Deadline:
    """The round deadline τ: ``fixed`` (``ms``), ``infinite`` (SGD(τ=∞)) or ``auto`` (chosen each
    round by ``hgo_common.deadline`` between the run's tau_min and tau_max).

    ``Deadline.parse`` reads a duration (``60``, ``"250ms"``, ``"2s"``, ``"inf"``) or ``"auto"``.
    """

    kind: str = "fixed"  # "fixed" | "infinite" | "auto"
    ms: float = 60.0  # the fixed deadline; inf when infinite; unused (0) when auto

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "infinite", "auto"):
            raise SpecError(f"deadline kind must be fixed, infinite or auto, got {self.kind!r}")
        if self.kind == "fixed" and not (0 < self.ms < math.inf):
            raise SpecError(f"--tau must be > 0 ms (or inf), got {self.ms:g}")

    @classmethod
    def of_ms(cls, ms: float) -> Deadline:
        """A fixed deadline, or the infinite one for ``inf``."""
        return cls("infinite", math.inf) if math.isinf(ms) else cls("fixed", float(ms))

    @classmethod
    def parse(cls, value: object, name: str = "tau") -> Deadline:
        if isinstance(value, Deadline):
            return value
        if isinstance(value, str) and value.strip().lower() == "auto":
            return cls("auto", 0.0)
        ms = parse_duration_ms(value, name)
        if ms <= 0:
            raise SpecError(f"{flag_of(name)} must be > 0 ms (or inf), got {ms:g}")
        return cls.of_ms(ms)

    @property
    def auto(self) -> bool:
        return self.kind == "auto"

    @property
    def infinite(self) -> bool:
        return self.kind == "infinite"

    def bound_ms(self, tau_max: float) -> float:
        """The longest a round may last: ``ms``, or ``tau_max`` for ``auto``."""
        return tau_max if self.auto else self.ms

    def to_value(self) -> float | str:
        """What a TOML file says: milliseconds (``inf`` for infinite) or ``"auto"``."""
        return "auto" if self.auto else self.ms

    def __str__(self) -> str:
        return "auto" if self.auto else duration_text(self.ms)
