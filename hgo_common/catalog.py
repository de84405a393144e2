"""What spans the four named kinds: rules, attacks, models, datasets.

Each kind keeps its own :class:`~hgo_common.registry.Registry` (``aggregators.REGISTRY``,
``attacks.REGISTRY``, ``models.REGISTRY``, ``datasets.REGISTRY``); this module sits above
them and answers the questions that concern all four: which names are built in, which
plug-ins are installed (``hgo-plugins``), whether a name loads (``check``), where a plug-in
comes from (``origin``), and whether a name received from the network may be loaded
(``resolve``, the worker's allow-list). Nothing below imports it, so there is no cycle.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from . import aggregators, attacks, datasets, models, plugins
from .plugins import KINDS, Origin, PluginError
from .registry import Registry

__all__ = [
    "REGISTRIES",
    "Row",
    "builtin_names",
    "check",
    "is_builtin",
    "listing",
    "main",
    "origin",
    "resolve",
]

#: Each kind's registry.
REGISTRIES: dict[str, Registry[Any]] = {
    "model": models.REGISTRY,
    "dataset": datasets.REGISTRY,
    "rule": aggregators.REGISTRY,
    "attack": attacks.REGISTRY,
}


_TORCH_BUILTINS = {("model", "cnn"), ("model", "cnn-cifar")}


def _registry(kind: str) -> Registry[Any]:
    if kind not in REGISTRIES:
        raise ValueError(f"unknown plug-in kind {kind!r}; expected one of {list(KINDS)}")
    return REGISTRIES[kind]


def builtin_names(kind: str) -> list[str]:
    """The built-in names of ``kind`` as users write them (rules: the rules, and each
    pre-aggregation step as ``STEP+RULE``)."""
    _registry(kind)
    if kind == "rule":
        return aggregators.names() + [f"{p}+RULE" for p in aggregators.pre_names()]
    if kind == "attack":
        return attacks.names()
    return REGISTRIES[kind].names()


def is_builtin(kind: str, name: str) -> bool:
    """True when ``name`` is a built-in of ``kind`` (a worker loads those without ``--allow-plugin``)."""
    return isinstance(name, str) and not plugins.is_reference(name) and name in builtin_names(kind)


def origin(kind: str, name: str) -> Origin | None:
    """The origin of ``name`` if it is a plug-in (None for built-ins); loads it."""
    if is_builtin(kind, name):
        return None
    return plugins.load(kind, name)[1]


def resolve(
    kind: str,
    name: str,
    allowed: Collection[str],
    *,
    distribution: str = "",
    version: str = "",
    source: str = "the server's spec",
    flag: str = "--allow-plugin",
) -> Origin | None:
    """``plugins.resolve`` against ``kind``'s built-ins: None for a built-in, the origin of an
    allowed plug-in, ``PluginRefused`` (before any import) for anything else."""
    return plugins.resolve(
        kind, name, allowed, builtins=builtin_names(kind),
        distribution=distribution, version=version, source=source, flag=flag,
    )  # fmt: skip


@dataclass(frozen=True)
class Row:
    """One line of :func:`listing`."""

    kind: str
    name: str
    source: str  # "built-in", "entry point", "entry point (shadowed by built-in)"
    target: str = ""
    distribution: str = ""
    version: str = ""


def listing(kinds: Sequence[str] = KINDS) -> list[Row]:
    """Built-ins and installed entry points of each kind (entry points are not imported)."""
    rows: list[Row] = []
    for kind in kinds:
        builtins = builtin_names(kind)
        rows += [
            Row(kind, n, "built-in (needs hgo[torch])" if (kind, n) in _TORCH_BUILTINS else "built-in")
            for n in builtins
        ]
        for n, ep in sorted(plugins.entry_points(kind).items()):
            src = "entry point (shadowed by built-in)" if n in builtins else "entry point"
            dist = ep.dist.name if ep.dist is not None else ""
            ver = ep.dist.version if ep.dist is not None else ""
            rows.append(Row(kind, n, src, ep.value, dist, ver))
    return rows


def check(kind: str, name: str) -> None:
    """Load ``name`` of ``kind`` through its registry, so that the registry's checks run.

    Rules and attacks are probed on random input, a dataset's ``Source`` is checked
    (its data is not read), a model's factory must be callable (the model itself is
    probed by ``models.create``, which needs the dataset's width). Built-ins pass.

    Raises
    ------
    PluginError
        Naming the plug-in and what is wrong (PluginMissing: not installed).
    """
    if kind == "rule":
        aggregators.get(name)  # composes 'STEP+RULE' chains
    elif kind == "attack":
        attacks.get(name)
    elif kind == "dataset":
        datasets.source(name)
    elif not is_builtin(kind, name):
        _registry(kind).get(name)


def main(argv: Sequence[str] | None = None) -> int:
    """``hgo-plugins``: list models, datasets, rules and attacks, built-in and installed."""
    p = argparse.ArgumentParser(
        prog="hgo-plugins",
        description="List the models, datasets, aggregation rules and attacks this installation "
        "knows: the built-ins and the plug-ins installed through entry points (hgo.models, "
        "hgo.datasets, hgo.rules, hgo.attacks). Any of them, or a 'package.module:Name' "
        "reference, can be given to --model/--dataset/--rule/--attack.",
    )
    p.add_argument("--kind", choices=KINDS, action="append", help="only this kind (repeatable)")
    p.add_argument(
        "--check", metavar="NAME", help="load NAME (of the one --kind given) and report its origin"
    )
    args = p.parse_args(argv)
    kinds = tuple(args.kind or KINDS)
    if args.check:
        if len(kinds) != 1:
            p.error("--check NAME needs exactly one --kind")
        try:
            check(kinds[0], args.check)
            o = origin(kinds[0], args.check)
        except PluginError as exc:
            print(f"hgo-plugins: {exc}", file=sys.stderr)
            return 2
        if o is None:
            print(f"{kinds[0]} {args.check!r}: built-in")
        else:
            print(f"{kinds[0]} {args.check!r}: {o.target} from {o.requirement()}")
        return 0
    for row in listing(kinds):
        extra = f"  {row.target}  [{row.distribution} {row.version}]" if row.target else ""
        print(f"{row.kind:<8} {row.name:<24} {row.source}{extra}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
