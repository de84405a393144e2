"""Everything generated from the declarations: parsers, mappings, TOML, checks, docs.

One function per form a run specification takes:

* :func:`add_arguments` / :func:`from_namespace` — an ``argparse`` parser's flags;
* :func:`coerce` — ``{key: value}`` from a TOML file, a scenario table or a program
  (keys with dashes or underscores, old spellings accepted with a note);
* :func:`check` — every declared constraint, with a message naming the flag, the value and
  what was expected;
* :func:`to_mapping` / :func:`to_toml` / :func:`read_toml` — the file form;
* :func:`markdown_table` — the reference table in the docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import tomllib
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hgo_common.errors import SpecError

from .declare import BOOL, Setting, declared, lookup
from .types import flag_of

ALIAS_DEST = "alias::"


def _default_text(s: Setting, default: Any) -> str:
    if s.default_text is not None:
        return s.default_text
    if default is None:
        return "none"
    return s.kind.text(default)


def help_text(s: Setting, default: Any) -> str:
    unit = f" [{s.unit}]" if s.unit else ""
    return f"{s.help}{unit} (default {_default_text(s, default)})".replace("%", "%%")


def add_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type,
    *,
    exclude: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    help_defaults: Mapping[str, str] | None = None,
) -> None:
    """Add a ``--flag`` for every declared setting of ``cls`` (and each old spelling).

    Every flag defaults to "not given" (``argparse.SUPPRESS``): :func:`from_namespace`
    returns only what the user typed, so files and program defaults stay beneath it.
    ``defaults`` (values) and ``help_defaults`` (words) change what help says for an entry
    point with defaults of its own. Synonyms are extra spellings of the same flag; old
    spellings (aliases) get flags of their own that say they are deprecated.
    """
    skip = set(exclude)
    defaults = defaults or {}
    words = help_defaults or {}
    for s, default in declared(cls):
        if not s.flag or s.name in skip:
            continue
        if s.name in words or s.name in defaults:  # the entry point's own default
            s = dataclasses.replace(s, default_text=words.get(s.name))
        default = defaults.get(s.name, default)
        text = help_text(s, default)
        names = [s.flag_name, *(flag_of(x) for x in (s.name, *s.synonyms) if flag_of(x) != s.flag_name)]
        if s.kind is BOOL:
            parser.add_argument(
                *names,
                dest=s.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            parser.add_argument(*names, dest=s.name, metavar=s.metavar, default=argparse.SUPPRESS, help=text)
        for alias in s.aliases:
            kwargs: dict[str, Any] = {
                "dest": f"{ALIAS_DEST}{alias}",
                "default": argparse.SUPPRESS,
                "help": f"old spelling of {s.flag_name} (deprecated)",
            }
            if s.kind is BOOL:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["metavar"] = s.metavar or s.name.upper()
            parser.add_argument(flag_of(alias), **kwargs)


def from_namespace(ns: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of ``cls`` the user typed, as raw values keyed by spelling (for :func:`coerce`)."""
    known = lookup(cls)
    out: dict[str, Any] = {}
    for key, value in vars(ns).items():
        name = key[len(ALIAS_DEST) :] if key.startswith(ALIAS_DEST) else key
        if name in known:
            out[name] = value
    return out


def deprecation(old: str, new: str, where: str = "") -> None:
    """Say once that ``old`` is an old spelling of ``new`` (a FutureWarning: shown by default)."""
    warnings.warn(
        f"{where}{old!r} is an old spelling of {new!r}; it still works but will be removed: use {new!r}",
        FutureWarning,
        stacklevel=3,
    )


def coerce(
    cls: type,
    raw: Mapping[str, Any],
    *,
    where: str = "",
    flags: bool = True,
) -> dict[str, Any]:
    """``{spelling: raw value}`` -> ``{field: typed value}`` for the settings of ``cls``.

    Keys may use dashes or underscores; an old spelling is accepted with a FutureWarning.
    ``None`` means "not set" and is dropped. Unknown keys raise SpecError listing them and
    the known ones (closest first). ``flags``: name values ``--flag`` (command lines) or
    ``key 'name'`` (files) in messages.
    """
    known = lookup(cls)
    out: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in raw.items():
        spelled = str(key).replace("-", "_")
        s = known.get(spelled)
        if s is None:
            unknown.append(str(key))
            continue
        if spelled != s.name and spelled not in s.synonyms:
            deprecation(
                spelled.replace("_", "-") if flags else spelled,
                s.name.replace("_", "-") if flags else s.name,
                where,
            )
        if value is None:
            continue
        if s.name in out:
            raise SpecError(f"{where}{s.name!r} is given twice (as {key!r} and another spelling)")
        try:
            out[s.name] = s.kind.parse(value, s.name)
        except SpecError as exc:
            if flags:
                raise SpecError(f"{where}{exc}") from None
            raise SpecError(f"{where}key {s.name!r}: {exc}") from None
    if unknown:
        names = sorted({s.name for s in known.values()})
        hints = {u: difflib.get_close_matches(u.replace("-", "_"), names, n=1) for u in unknown}
        near = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise SpecError(
            f"{where}unknown keys {sorted(unknown)}{f' ({near})' if near else ''}; known keys: "
            f"{sorted(n.replace('_', '-') for n in names)}"
        )
    return out


def check(obj: Any, *, where: str = "") -> None:
    """Every declared constraint of ``obj``'s settings; SpecError names the flag, value and rule."""
    for s, _ in declared(type(obj)):
        value = getattr(obj, s.name)
        if value is None or s.check is None:
            continue
        try:
            ok = s.check(value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            shown = list(value) if isinstance(value, tuple) else s.kind.text(value)
            label = f"{s.flag_name} (key {s.name!r})" if s.cli else s.flag_name
            raise SpecError(f"{where}{label} must {s.check.text}, got {shown}")


def to_mapping(obj: Any, *, skip_defaults: bool = True, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``obj``'s settings as TOML-able values (secrets and unset values left out)."""
    skip = set(exclude)
    out: dict[str, Any] = {}
    for s, default in declared(type(obj)):
        value = getattr(obj, s.name)
        if s.secret or s.name in skip or value is None:
            continue
        if skip_defaults and value == default:
            continue
        out[s.name] = s.kind.to_toml(value)
    return out


def toml_value(value: Any) -> str:
    """One TOML value (bool, number, string, array, inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise SpecError("a NaN setting cannot be written to TOML")
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise SpecError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def to_toml(mapping: Mapping[str, Any], header: str = "", table: str | None = None) -> str:
    """TOML text of a :func:`to_mapping` (keys spelled with dashes)."""
    lines = [f"# {header}"] if header else []
    if table:
        lines.append(f"[{table}]")
    lines += [f"{k.replace('_', '-')} = {toml_value(v)}" for k, v in mapping.items()]
    return "\n".join(lines) + "\n"


def read_toml_table(path: str | Path, *, table: str | None = None, what: str = "--config") -> dict[str, Any]:
    """The raw table of a TOML file (``[table]`` when the file has one, else the top level)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{what}: file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError(f"{what}: cannot read {str(p)!r}: {why}; expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{what}: {str(p)!r} is not valid TOML: {exc}") from None
    if table is not None and isinstance(raw.get(table), dict):
        return dict(raw[table])
    return raw


def markdown_table(*classes: type, own_only: bool = False) -> str:
    """A reference table of the settings of ``classes``: flag, TOML key, default, unit, help
    (``own_only``: leave out the settings a class inherits)."""
    rows = ["| flag | key | default | unit | meaning |", "|---|---|---|---|---|"]
    for cls in classes:
        inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)
                     for f in dataclasses.fields(base)} if own_only else set()  # fmt: skip
        for s, default in declared(cls):
            if s.name in inherited:
                continue
            flag = s.flag_name if s.flag else ""
            help_ = s.help.replace("|", "\\|")
            if s.aliases:
                help_ += f" (old spellings: {', '.join(s.aliases)})"
            rows.append(f"| `{flag}` | `{s.name}` | {_default_text(s, default)} | {s.unit} | {help_} |")
    return "\n".join(rows) + "\n"
