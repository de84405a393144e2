"""User code by name: ``package.module:Name`` references and installed entry points.

Four kinds of plug-in, each with a public contract documented in docs/plugins.md and
used by the built-ins too:

=========  ====================  ==========================================================
kind       entry-point group     the object a name resolves to
=========  ====================  ==========================================================
model      ``hgo.models``        a factory ``factory(*, n_features, n_classes[, l2]) -> model``
                                 (``hgo_common.models.ModelProtocol``)
dataset    ``hgo.datasets``      a ``hgo_common.datasets.Source`` (or a no-argument callable
                                 returning one)
rule       ``hgo.rules``         a ``hgo_common.aggregators.Rule`` (or a plain function
                                 ``fn(x, *, f) -> (k,)``)
attack     ``hgo.attacks``       a ``hgo_common.attacks.Attack``
=========  ====================  ==========================================================

A name is looked up in this order: the built-in registry of its kind; a reference
``package.module:Name`` (anything with a ``:``), imported as given; an entry point of
the kind's group. Entry-point names never shadow built-ins (``hgo-plugins`` marks a
clash). Every failure raises :class:`PluginError` (a ValueError) whose message names
the plug-in, its kind and what is wrong; a plug-in that is not installed raises
:class:`PluginMissing`, whose ``requirement`` says what to install.

The :class:`Origin` of a plug-in (its distribution and version) travels in the server's
TrainingSpec, so that a worker trains exactly the model the server names.

A name that arrives from the network is not a name the operator chose: importing it
would let a server (or anyone on a plaintext path) run any installed module on the
device. Such names go through :func:`resolve`, which loads only built-ins and the names
of an explicit allow-list (``hgo-worker --allow-plugin``) and refuses anything else with
:class:`PluginRefused` *before* importing anything.

This module knows no kind's built-ins: it loads user code. The built-ins live in each
kind's ``Registry`` (``hgo_common.registry``), and what spans the four kinds (the listing,
``hgo-plugins``, the worker's allow-list check against the built-ins) in
``hgo_common.catalog``, which sits above them.

This module is pure Python (importlib only): no grpc, no numpy at import.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from hgo_common.errors import PluginError as _PluginErrorBase

__all__ = [
    "GROUPS",
    "KINDS",
    "Origin",
    "PluginError",
    "PluginMissing",
    "PluginRefused",
    "check_installed",
    "entry_points",
    "is_reference",
    "load",
    "resolve",
]

GROUPS: dict[str, str] = {
    "model": "hgo.models",
    "dataset": "hgo.datasets",
    "rule": "hgo.rules",
    "attack": "hgo.attacks",
}
KINDS: tuple[str, ...] = tuple(GROUPS)


class PluginError(_PluginErrorBase):
    """A plug-in that cannot be loaded or that breaks its contract (the message says which)."""


class PluginMissing(PluginError):
    """A plug-in named by a reference or a spec is not installed here.

    Attributes
    ----------
    requirement : str
        What to install, e.g. ``"hgo-example-plugin==0.1.0"``, or a module name when the
        code does not come from an installed distribution.
    """

    def __init__(self, message: str, requirement: str) -> None:
        super().__init__(message)
        self.requirement = requirement


class PluginRefused(PluginError):
    """A name this process was not allowed to load (it is not built in nor allow-listed).

    Attributes
    ----------
    kind, name : str
        What was refused (``name`` as received; print it with ``!r``).
    """

    def __init__(self, message: str, kind: str, name: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


@dataclass(frozen=True)
class Origin:
    """Where a plug-in comes from.

    Attributes
    ----------
    kind : str
        One of ``KINDS``.
    name : str
        The name as the user gave it (``"tiny"``, ``"mypkg.models:Tiny"``).
    target : str
        The ``module:attribute`` it resolved to.
    distribution, version : str
        The installed distribution that provides the module and its version; empty when
        the module is not part of one (a file on ``sys.path``).
    """

    kind: str
    name: str
    target: str
    distribution: str = ""
    version: str = ""

    def requirement(self) -> str:
        """What a machine must install to load this plug-in."""
        if self.distribution:
            return f"{self.distribution}=={self.version}" if self.version else self.distribution
        return f"a package providing module {self.target.partition(':')[0]!r}"


def is_reference(name: str) -> bool:
    """True for ``package.module:Name`` references (as opposed to registry names)."""
    return isinstance(name, str) and ":" in name


def _check_kind(kind: str) -> str:
    if kind not in GROUPS:
        raise ValueError(f"unknown plug-in kind {kind!r}; expected one of {list(KINDS)}")
    return GROUPS[kind]


_EP_CACHE: dict[tuple[str, tuple[str, ...]], dict[str, md.EntryPoint]] = {}


def entry_points(kind: str) -> dict[str, md.EntryPoint]:
    """The installed entry points of ``kind``'s group, by name (first one wins).

    Cached per ``sys.path``: scanning every distribution's metadata costs milliseconds,
    and a worker resolves its attack name on every round.
    """
    group = _check_kind(kind)
    key = (group, tuple(sys.path))
    if key not in _EP_CACHE:
        out: dict[str, md.EntryPoint] = {}
        for ep in md.entry_points(group=group):
            out.setdefault(ep.name, ep)
        _EP_CACHE[key] = out
    return dict(_EP_CACHE[key])


def _distribution_of(module: str) -> tuple[str, str]:
    top = module.split(".")[0]
    dists = md.packages_distributions().get(top, [])
    if not dists:
        return "", ""
    name = dists[0]
    try:
        return name, md.version(name)
    except md.PackageNotFoundError:  # pragma: no cover - metadata without a version
        return name, ""


def _split_reference(kind: str, name: str) -> tuple[str, str]:
    module, _, attr = name.partition(":")
    module, attr = module.strip(), attr.strip()
    if not module or not attr or ":" in attr or not all(p.isidentifier() for p in module.split(".")):
        raise PluginError(
            f"{kind} {name!r}: expected a reference 'package.module:Name' (a dotted module path, "
            "one ':' and an attribute name)"
        )
    if not all(p.isidentifier() for p in attr.split(".")):
        raise PluginError(f"{kind} {name!r}: {attr!r} is not an attribute name")
    return module, attr


def _import(kind: str, name: str, module: str, attr: str, requirement: str | None) -> Any:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or module
        if module == missing or module.startswith(missing + "."):
            need = requirement or f"a package providing module {missing!r}"
            raise PluginMissing(
                f"{kind} {name!r}: module {missing!r} is not installed here; install {need}", need
            ) from None
        raise PluginError(
            f"{kind} {name!r}: importing {module!r} failed: it needs module {missing!r}, "
            "which is not installed"
        ) from None
    except Exception as exc:  # a plug-in's own bug at import time: name it, no traceback
        raise PluginError(
            f"{kind} {name!r}: importing {module!r} failed: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = mod
    for part in attr.split(".") if attr else ():
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"{kind} {name!r}: module {module!r} has no attribute {attr!r}") from None
    return obj


_CACHE: dict[tuple[str, str], tuple[Any, Origin]] = {}


def load(kind: str, name: str) -> tuple[Any, Origin]:
    """Resolve a non-built-in ``name`` of ``kind`` to its object and origin.

    ``name`` is either a reference ``package.module:Name`` or the name of an entry point
    in ``GROUPS[kind]``. Results are cached per process.

    Raises
    ------
    PluginMissing
        The module (or the entry point) is not installed.
    PluginError
        Import errors inside the plug-in, a missing attribute, a malformed reference.
    """
    group = _check_kind(kind)
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{kind} name must be a non-empty string, got {name!r}")
    key = (kind, name)
    if key in _CACHE:
        return _CACHE[key]
    if is_reference(name):
        module, attr = _split_reference(kind, name)
        obj = _import(kind, name, module, attr, None)
        dist, version = _distribution_of(module)
        origin = Origin(kind, name, f"{module}:{attr}", dist, version)
    else:
        eps = entry_points(kind)
        if name not in eps:
            installed = sorted(eps)
            raise PluginMissing(
                f"unknown {kind} {name!r}: not built in, not a 'package.module:Name' reference, "
                f"and no installed plug-in registers it in entry-point group {group!r}"
                + (f" (installed: {installed})" if installed else ""),
                name,
            )
        ep = eps[name]
        dist_name = ep.dist.name if ep.dist is not None else ""
        dist_version = ep.dist.version if ep.dist is not None else ""
        module, _, attr = ep.value.partition(":")
        req = f"{dist_name}=={dist_version}" if dist_name else None
        obj = _import(kind, name, module.strip(), attr.strip(), req)
        origin = Origin(kind, name, ep.value, dist_name, dist_version)
    _CACHE[key] = (obj, origin)
    return obj, origin


def _shown(name: str, limit: int = 120) -> str:
    """``repr`` of a name received from elsewhere, cut to ``limit`` characters (log-safe)."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve(
    kind: str,
    name: str,
    allowed: Collection[str],
    *,
    builtins: Collection[str],
    distribution: str = "",
    version: str = "",
    source: str = "the server's spec",
    flag: str = "--allow-plugin",
) -> Origin | None:
    """Load ``name`` of ``kind`` only if it is built in or listed in ``allowed``.

    For names a process did not choose itself (a worker's TrainingSpec): a name in
    ``builtins`` (the kind's built-in names, ``hgo_common.catalog.builtin_names``)
    resolves to None; a name in ``allowed`` (compared as given: an entry-point name or a
    ``package.module:Name`` reference) is loaded, checked against ``distribution`` and
    ``version`` when they are given (:func:`check_installed`), and its origin returned.
    Anything else is refused before any import.

    Raises
    ------
    PluginRefused
        ``name`` is neither built in nor allowed; the message names it, ``source`` and
        the ``flag`` that would allow it.
    PluginMissing, PluginError
        An allowed plug-in that is not installed (or another version), or is broken.
    """
    _check_kind(kind)
    if isinstance(name, str) and name and not is_reference(name) and name in builtins:
        return None
    if not isinstance(name, str) or name not in allowed:
        listed = sorted(allowed)
        raise PluginRefused(
            f"{source} names {kind} {_shown(name)}, an unknown {kind}: not built in and not allowed here "
            f"(built-in {kind}s: {list(builtins)}; allowed plug-ins: {listed or 'none'}): refusing to "
            f"import it. If you trust it, start the worker with {flag} {_shown(name)}",
            kind,
            str(name),
        )
    check_installed(kind, name, distribution, version)
    return load(kind, name)[1]  # cached by check_installed's load


def check_installed(kind: str, name: str, distribution: str, version: str) -> None:
    """Raise PluginMissing unless ``name`` loads here from ``distribution`` at ``version``.

    Used by a worker to make sure it trains the model the server names (the spec carries
    the server's distribution and version). Empty ``distribution``: only loadability.
    """
    need = f"{distribution}=={version}" if distribution and version else (distribution or name)
    try:
        _, got = load(kind, name)
    except PluginMissing as exc:
        raise PluginMissing(
            f"the server trains {kind} {name!r}"
            + (f" from plug-in {distribution} {version}" if distribution else "")
            + f", which is not installed here: install {need} ({exc})",
            need,
        ) from None
    if distribution and (got.distribution != distribution or (version and got.version != version)):
        have = f"{got.distribution} {got.version}".strip() or "no distribution"
        raise PluginMissing(
            f"the server trains {kind} {name!r} from plug-in {distribution} {version}, but here it "
            f"comes from {have}: install {need}",
            need,
        )
