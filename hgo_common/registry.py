"""One registry idiom for the four kinds of named things: rules, attacks, models, datasets.

Each kind's package holds one :class:`Registry`: its built-ins are added at import time
(``REGISTRY.add(name, obj)``), and a name that is not built in is looked up as a plug-in
(:mod:`hgo_common.plugins`: a ``package.module:Name`` reference or an entry point of the
kind's group), loaded once, checked by the kind's ``adapt`` function (which wraps, probes
and raises ``PluginError`` naming the plug-in) and cached::

    RULES = Registry("rule", adapt=_adapt_rule)
    RULES.add("median", Rule(...))
    RULES.get("median")                 # built-in
    RULES.get("mypkg.rules:trimmed")    # plug-in, loaded, adapted and cached

Layering (no import cycle): ``errors`` < ``plugins`` (loading user code, knows no kind) <
``registry`` < the four kinds (``aggregators``, ``attacks``, ``models``, ``datasets``, each
importing its own modules at import time) < ``catalog`` (what spans the kinds: listing,
checks, the worker's allow-list, ``hgo-plugins``).

This module is pure Python: no numpy at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from . import plugins

T = TypeVar("T")

__all__ = ["Registry"]


def _take_as_is(name: str, obj: Any) -> Any:
    return obj


class Registry(Generic[T]):
    """Built-in objects of one plug-in kind by name, and the plug-ins loaded so far.

    Parameters
    ----------
    kind : str
        One of ``plugins.KINDS`` (``"rule"``, ``"attack"``, ``"model"``, ``"dataset"``).
    adapt : callable, optional
        ``adapt(name, obj) -> T`` turns a loaded plug-in object into the registry's type,
        checking its contract (raise ``plugins.PluginError`` naming ``name``). Default: the
        object as loaded.
    """

    def __init__(self, kind: str, *, adapt: Callable[[str, Any], T] | None = None) -> None:
        if kind not in plugins.KINDS:
            raise ValueError(f"unknown plug-in kind {kind!r}; expected one of {list(plugins.KINDS)}")
        self.kind = kind
        self._adapt: Callable[[str, Any], T] = adapt or _take_as_is
        self._builtins: dict[str, T] = {}
        self._plugins: dict[str, T] = {}

    # ---- built-ins ------------------------------------------------------------------

    def add(self, name: str, obj: T) -> T:
        """Register the built-in ``obj`` under ``name`` (once; no ``:`` or ``+`` in names)."""
        if not isinstance(name, str) or not name or ":" in name or "+" in name:
            raise ValueError(f"{self.kind} name {name!r}: expected a non-empty name without ':' or '+'")
        if name in self._builtins:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._builtins[name] = obj
        return obj

    def names(self) -> list[str]:
        """Built-in names, in registration order."""
        return list(self._builtins)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) of every built-in, in registration order."""
        return iter(list(self._builtins.items()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._builtins

    def builtin(self, name: str) -> T:
        """The built-in ``name`` (KeyError if it is not one)."""
        return self._builtins[name]

    # ---- plug-ins -------------------------------------------------------------------

    def set_adapter(self, adapt: Callable[[str, Any], T]) -> None:
        """Set ``adapt`` after construction (for kinds whose checks are defined after the
        registry their built-ins register into)."""
        self._adapt = adapt

    def pluggable(self, name: object) -> bool:
        """True when ``name`` is not built in but may name a plug-in (a reference or an
        installed entry point); loads nothing."""
        if not isinstance(name, str) or name in self._builtins:
            return False
        return name in self._plugins or plugins.is_reference(name) or name in plugins.entry_points(self.kind)

    def plugin(self, name: str) -> T:
        """Load, adapt and cache the plug-in ``name`` (PluginMissing / PluginError)."""
        if name not in self._plugins:
            obj, _ = plugins.load(self.kind, name)
            self._plugins[name] = self._adapt(name, obj)
        return self._plugins[name]

    def installed(self) -> str:
        """A short note on the installed entry points of this kind, for error messages."""
        eps = sorted(plugins.entry_points(self.kind))
        return f"installed: {eps}" if eps else "none installed; see hgo-plugins"

    def get(self, name: str, *, unknown: str = "") -> T:
        """The built-in or plug-in ``name``.

        Raises
        ------
        PluginMissing
            ``name`` is neither built in nor a possible plug-in; the message is ``unknown``
            when given, else one listing the built-ins.
        PluginError
            A plug-in that cannot be loaded or breaks its contract.
        """
        if isinstance(name, str) and name in self._builtins:
            return self._builtins[name]
        if self.pluggable(name):
            return self.plugin(name)
        raise plugins.PluginMissing(
            unknown
            or f"unknown {self.kind} {name!r}; expected one of {self.names()}, a 'package.module:Name' "
            f"reference or an installed plug-in ({self.installed()})",
            str(name),
        )
