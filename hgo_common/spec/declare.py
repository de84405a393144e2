"""How a setting is declared: once, as a dataclass field carrying a :class:`Setting`.

A run's settings are the fields of a few frozen dataclasses (``RunSpec``, ``Population``,
the server's and the launcher's options). Each field is made by :func:`setting`, which
records its kind (how a value is read and written), its help, its unit, its constraint
and its old spellings. Everything else — command-line parsers, the TOML reader and writer,
the scenario reader, the error messages — is generated from these declarations by
:mod:`hgo_common.spec.forms`, in the spirit of scikit-learn's declarative parameter
constraints (``sklearn.utils._param_validation``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from hgo_common.errors import SpecError

from .types import Deadline, Quorum, flag_of, parse_duration_ms

# ------------------------------------------------------------------------------- kinds


class Kind:
    """How a value of a setting is read (from a flag string or a TOML value) and written."""

    what = "a value"

    def parse(self, value: object, name: str) -> Any:
        raise NotImplementedError

    def to_toml(self, value: Any) -> Any:
        """The value as a TOML-able Python value (None: not written)."""
        return value

    def text(self, value: Any) -> str:
        """The value as a person reads it in help and messages."""
        return str(value)

    def bad(self, value: object, name: str) -> SpecError:
        return SpecError(f"{flag_of(name)}: expected {self.what}, got {value!r}")


class Int(Kind):
    what = "an integer"

    def parse(self, value: object, name: str) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise self.bad(value, name)
        try:
            if isinstance(value, str):
                return int(value.strip())
            if isinstance(value, int | float):
                return int(value)
        except ValueError:
            pass
        raise self.bad(value, name)


class Float(Kind):
    what = "a number"

    def parse(self, value: object, name: str) -> float:
        if isinstance(value, bool):
            raise self.bad(value, name)
        try:
            if isinstance(value, str | int | float):
                return float(value)
        except ValueError:
            pass
        raise self.bad(value, name)

    def to_toml(self, value: Any) -> Any:
        return value

    def text(self, value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)


class Bool(Kind):
    what = "true or false"

    def parse(self, value: object, name: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in (
            "true",
            "false",
            "1",
            "0",
            "yes",
            "no",
            "on",
            "off",
        ):
            return value.strip().lower() in ("true", "1", "yes", "on")
        raise self.bad(value, name)

    def text(self, value: Any) -> str:
        return "on" if value else "off"


class Str(Kind):
    what = "a string"

    def parse(self, value: object, name: str) -> str:
        if not isinstance(value, str):
            raise self.bad(value, name)
        return value


class Choice(Str):
    """One of a fixed list of names (the list may come from a function, e.g. a registry)."""

    def __init__(self, values: Sequence[str] | Callable[[], Sequence[str]]) -> None:
        self._values = values

    @property
    def values(self) -> list[str]:
        return list(self._values() if callable(self._values) else self._values)

    @property
    def what(self) -> str:  # type: ignore[override]
        return f"one of {self.values}"

    def parse(self, value: object, name: str) -> str:
        text = super().parse(value, name)
        if text not in self.values:
            raise SpecError(f"{flag_of(name)} must be one of {self.values}, got {text!r}")
        return text


class Duration(Kind):
    what = "a duration (ms, or 250ms, 2s, inf)"

    def parse(self, value: object, name: str) -> float:
        return parse_duration_ms(value, name)

    def to_toml(self, value: Any) -> Any:
        return "inf" if math.isinf(value) else value

    def text(self, value: Any) -> str:
        return "inf" if math.isinf(value) else f"{value:g} ms"


class Ints(Kind):
    """A tuple of integers: ``30`` or ``"64,32"`` on a command line, ``[64, 32]`` in TOML."""

    what = "comma-separated integers like 30 or 64,32"

    def parse(self, value: object, name: str) -> tuple[int, ...]:
        items: Sequence[object]
        if isinstance(value, str):
            items = [s for s in value.replace(" ", "").split(",") if s]
        elif isinstance(value, list | tuple):
            items = value
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        else:
            raise self.bad(value, name)
        try:
            return tuple(int(str(s)) for s in items)
        except ValueError:
            raise self.bad(value, name) from None

    def to_toml(self, value: Any) -> Any:
        return list(value)

    def text(self, value: Any) -> str:
        return ",".join(str(x) for x in value)


class Floats(Ints):
    """A tuple of numbers: ``"1,2.5"`` on a command line, ``[1, 2.5]`` in TOML."""

    what = "comma-separated numbers like 100,1000.5"

    def parse(self, value: object, name: str) -> tuple[float, ...]:  # type: ignore[override]
        items: Sequence[object]
        if isinstance(value, str):
            items = [s for s in value.replace(" ", "").split(",") if s]
        elif isinstance(value, list | tuple):
            items = value
        else:
            raise self.bad(value, name)
        try:
            return tuple(float(str(s)) for s in items if not isinstance(s, bool))
        except ValueError:
            raise self.bad(value, name) from None


class Table(Kind):
    """A table of parameters: ``{eps = 10}`` in TOML, ``KEY=VALUE,...`` on a command line."""

    what = "a table of KEY=VALUE parameters"

    def parse(self, value: object, name: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):
            out: dict[str, Any] = {}
            for item in filter(None, (s.strip() for s in value.split(","))):
                key, sep, raw = item.partition("=")
                if not sep or not key:
                    raise self.bad(value, name)
                try:
                    out[key] = float(raw) if raw.replace(".", "", 1).lstrip("-").isdigit() else raw
                except ValueError:
                    out[key] = raw
            return out
        raise self.bad(value, name)

    def text(self, value: Any) -> str:
        return ",".join(f"{k}={v}" for k, v in value.items()) or "{}"


class QuorumKind(Kind):
    what = "an integer >= 1 or 'auto'"

    def parse(self, value: object, name: str) -> Quorum:
        return Quorum.parse(value, name)

    def to_toml(self, value: Any) -> Any:
        return value.to_value()


class DeadlineKind(Kind):
    what = "a deadline (ms, or 250ms, 2s, inf, auto)"

    def parse(self, value: object, name: str) -> Deadline:
        return Deadline.parse(value, name)

    def to_toml(self, value: Any) -> Any:
        return value.to_value()


class Mix(Kind):
    """A hardware mix: a name (``default``, ``C_min``, ...) or weak,average,powerful fractions."""

    what = "a mix name (default, C_weak, C_min, C_1..C_3, C_powerful) or W,A,P fractions"

    def parse(self, value: object, name: str) -> str | tuple[float, float, float]:
        from hgo_common import profiles

        if isinstance(value, list | tuple):
            value = tuple(float(x) for x in value)
        try:
            if isinstance(value, str) and value in profiles.MIXES:
                return value
            fractions = profiles.parse_mix(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{flag_of(name)} {value!r}: {exc}") from None
        return value if isinstance(value, str) else fractions

    def to_toml(self, value: Any) -> Any:
        return value if isinstance(value, str) else list(value)

    def text(self, value: Any) -> str:
        return value if isinstance(value, str) else ",".join(f"{x:g}" for x in value)


INT, FLOAT, BOOL, STR, DURATION = Int(), Float(), Bool(), Str(), Duration()
INTS, FLOATS, TABLE, QUORUM, DEADLINE, MIX = Ints(), Floats(), Table(), QuorumKind(), DeadlineKind(), Mix()

# ------------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Check:
    """A constraint on a value: ``ok(value)`` and the words ``text`` completing "must ..."."""

    ok: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return bool(self.ok(value))


def at_least(lo: float, why: str = "") -> Check:
    return Check(lambda x: x >= lo, f"be >= {lo:g}{f' ({why})' if why else ''}")


def above(lo: float, why: str = "") -> Check:
    return Check(lambda x: x > lo and not math.isnan(x), f"be > {lo:g}{f' ({why})' if why else ''}")


def within(lo: float, hi: float, why: str = "") -> Check:
    return Check(lambda x: lo <= x <= hi, f"be in [{lo:g}, {hi:g}]{f' ({why})' if why else ''}")


def positive_finite() -> Check:
    return Check(lambda x: x > 0 and math.isfinite(x), "be a positive finite number")


def finite_at_least(lo: float, why: str = "") -> Check:
    return Check(
        lambda x: x >= lo and math.isfinite(x), f"be a finite number >= {lo:g}{f' ({why})' if why else ''}"
    )


# ------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One declared setting. ``name`` is filled in from the field it is attached to."""

    kind: Kind
    help: str
    unit: str = ""
    check: Check | None = None
    aliases: tuple[str, ...] = ()  # old spellings: accepted, with a deprecation note
    synonyms: tuple[str, ...] = ()  # other spellings, accepted as they are (e.g. workers for n)
    flag: bool = True  # has a command-line flag
    metavar: str | None = None
    secret: bool = False  # never written to a file, masked in dumps
    default_text: str | None = None  # what help says when the default is computed (e.g. "q")
    cli: str | None = None  # the flag's spelling when it is not the name (n: --workers)
    name: str = ""

    @property
    def flag_name(self) -> str:
        return flag_of(self.cli or self.name)


META = "hgo.setting"


def setting(
    default: Any,
    kind: Kind,
    help: str,
    *,
    unit: str = "",
    check: Check | None = None,
    aliases: Sequence[str] = (),
    synonyms: Sequence[str] = (),
    flag: bool = True,
    metavar: str | None = None,
    secret: bool = False,
    default_text: str | None = None,
    cli: str | None = None,
) -> Any:
    """A dataclass field declaring one setting (its default, kind, help, unit, constraint)."""
    meta = Setting(
        kind, help, unit, check, tuple(aliases), tuple(synonyms), flag, metavar, secret, default_text, cli
    )
    if isinstance(default, dict | list):
        return field(default_factory=functools.partial(type(default), default), metadata={META: meta},
                     repr=not secret)  # fmt: skip
    return field(default=default, metadata={META: meta}, repr=not secret)


def declared(cls: type) -> Iterator[tuple[Setting, Any]]:
    """``(setting, default)`` for each declared field of the dataclass ``cls``, in order."""
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(META)
        if meta is None:
            continue
        has_factory = f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if has_factory else f.default  # type: ignore[operator]
        yield dataclasses.replace(meta, name=f.name), default


def lookup(cls: type) -> dict[str, Setting]:
    """Every spelling (name, alias) of ``cls``'s settings -> its setting."""
    out: dict[str, Setting] = {}
    for s, _ in declared(cls):
        out[s.name] = s
        for alias in (*s.aliases, *s.synonyms):
            out[alias] = s
    return out
