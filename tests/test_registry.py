"""One registry idiom for the four named kinds and no import cycle among the project's
modules, counting imports inside functions, which hide cycles from a top-level reading
(issue "Declare a run once", item 5). The layer directions are tests/test_layers.py's."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

from hgo_common import aggregators, attacks, catalog, datasets, models, plugins
from hgo_common.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hgo_common", "hgo_server", "hgo_worker", "hgo_lab")


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            if f.name.endswith("_pb2.py") or f.name.endswith("_pb2_grpc.py"):
                continue
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _targets(node: ast.Import | ast.ImportFrom, cur: str, is_pkg: bool, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    base = cur if is_pkg else cur.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    mod = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
    subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
    # `from pkg import submodule` imports the submodule; `from pkg import name` the package.
    out = subs if len(subs) == len(node.names) else [mod, *subs]
    return [t for t in out if t in mods]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, at top level or inside functions."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name].update(
                    t for t in _targets(node, name, path.name == "__init__.py", mods) if t != name
                )
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_cycle() -> None:
    # the check below must be able to fail: a two-module cycle and a function-level one
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle_among_the_projects_modules() -> None:
    graph = import_graph()
    assert len(graph) > 100  # the walk saw the project
    assert cycles(graph) == []


def test_layers_below_the_kinds_import_none_of_them() -> None:
    """plugins (loading user code) and registry know no kind; catalog sits above all four."""
    graph = import_graph()
    kinds = {"hgo_common.aggregators", "hgo_common.attacks", "hgo_common.models", "hgo_common.datasets"}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for w in graph[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    for low in ("hgo_common.plugins", "hgo_common.registry", "hgo_common.errors"):
        assert not {m for m in reach(low) if m.rpartition(".")[0] in kinds or m in kinds}, low
    assert kinds <= reach("hgo_common.catalog")


def test_each_kind_has_one_registry_of_the_same_idiom() -> None:
    for kind, reg in catalog.REGISTRIES.items():
        assert isinstance(reg, Registry) and reg.kind == kind
    assert set(catalog.REGISTRIES) == set(plugins.KINDS)
    assert "median" in aggregators.REGISTRY and "nnm" in aggregators.REGISTRY
    assert "foe" in attacks.REGISTRY and "mlp" in models.REGISTRY and "digits" in datasets.REGISTRY
    assert models.names() == models.REGISTRY.names() and datasets.names() == datasets.REGISTRY.names()
    assert catalog.is_builtin("rule", "median") and not catalog.is_builtin("rule", "mypkg.rules:x")


def test_a_registry_refuses_a_second_registration_and_names_the_unknown() -> None:
    reg: Registry[int] = Registry("rule")
    reg.add("one", 1)
    with pytest.raises(ValueError, match="rule 'one' registered twice"):
        reg.add("one", 2)
    for bad in ("", "a:b", "a+b"):
        with pytest.raises(ValueError, match="without ':' or '\\+'"):
            reg.add(bad, 3)
    with pytest.raises(plugins.PluginMissing, match=r"unknown rule 'two'; expected one of \['one'\]"):
        reg.get("two")
    with pytest.raises(ValueError, match="unknown plug-in kind 'widget'"):
        Registry("widget")


def test_a_plugin_is_loaded_adapted_and_cached_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "layers_plug.py").write_text(
        "import numpy as np\ndef spread(x, *, f):\n    return x.max(axis=0) - x.min(axis=0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    calls: list[str] = []

    def adapt(name: str, obj: object) -> object:
        calls.append(name)
        return obj

    reg: Registry[object] = Registry("rule", adapt=adapt)
    fn = reg.get("layers_plug:spread")
    assert reg.get("layers_plug:spread") is fn and calls == ["layers_plug:spread"]
    # through the real rule registry, the plain function becomes a probed Rule
    rule = aggregators.get("layers_plug:spread")
    assert np.allclose(rule(np.array([[0.0, 1.0], [2.0, 5.0]]), f=0), [2.0, 4.0])
    assert aggregators.get("nnm+layers_plug:spread").name == "nnm+layers_plug:spread"
