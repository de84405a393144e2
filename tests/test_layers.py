"""Layers point one way: core → wire → server | worker → lab.

* ``hgo_common`` (less ``hgo_common.net``) is the pure core: importing any of its modules
  loads neither grpc nor protobuf;
* ``hgo_common.net`` is the wire, the only grpc-importing part of ``hgo_common``;
* ``hgo_server`` and ``hgo_worker`` import the core and the wire, never each other, and
  never the lab; neither loads matplotlib;
* ``hgo_lab`` may import everything below it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hgo_common", "hgo_server", "hgo_worker", "hgo_lab")
# package -> packages (and third-party roots) it must not import
FORBIDDEN = {
    "core": {"hgo_server", "hgo_worker", "hgo_lab", "grpc", "google", "matplotlib"},
    "hgo_common.net": {"hgo_server", "hgo_worker", "hgo_lab", "matplotlib"},
    "hgo_server": {"hgo_worker", "hgo_lab", "matplotlib"},
    "hgo_worker": {"hgo_server", "hgo_lab", "matplotlib"},
    "hgo_lab": set(),
}


def _modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name.startswith("hgo_common.net.proto"):
            continue  # generated stubs
        out.append((name, path))
    return out


def _layer(module: str) -> str:
    if module == "hgo_common.net" or module.startswith("hgo_common.net."):
        return "hgo_common.net"
    if module.startswith("hgo_common"):
        return "core"
    return module.split(".")[0]


def _imported_roots(path: Path, module: str) -> set[str]:
    """Top-level names a module imports (``hgo_common.net`` kept apart), relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
                names.add(target)
                if not node.module:
                    names.update(f"{target}.{a.name}" for a in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    roots = set()
    for name in names:
        roots.add("hgo_common.net" if name.startswith("hgo_common.net") else name.split(".")[0])
    return roots


@pytest.mark.parametrize("module,path", [m for p in PACKAGES for m in _modules(p)], ids=lambda x: str(x))
def test_no_import_points_upward(module: str, path: Path) -> None:
    layer = _layer(module)
    bad = _imported_roots(path, module) & FORBIDDEN[layer]
    if layer == "core":
        bad |= {r for r in _imported_roots(path, module) if r == "hgo_common.net"}
    assert not bad, f"{module} ({layer}) imports {sorted(bad)}"


# Core modules that need an optional extra (pyproject [project.optional-dependencies]):
# module -> (the third-party package it needs, the extra that provides it). Every other
# core module must import on a bare install.
OPTIONAL = {"hgo_common.models.torch_adapter": ("torch", "hgo[torch]")}
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _block_torch(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment in which ``import torch`` fails (whether or not torch is installed)
    and leaves a marker file, so an attempt that a caller swallows is still seen."""
    marker = tmp_path / "torch-was-imported"
    blocker = tmp_path / "notorch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nraise ImportError('torch is blocked for this test')\n"
    )
    return {**os.environ, "PYTHONPATH": str(blocker.parent)}, marker


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_importing_the_core_loads_neither_grpc_nor_protobuf(tmp_path: Path) -> None:
    """Importing every core module (a real interpreter, torch blocked: a bare install) leaves
    grpc, protobuf, matplotlib and torch unloaded; the optional modules fail saying what to install."""
    core = [m for m, _ in _modules("hgo_common") if _layer(m) == "core" and m not in OPTIONAL]
    code = (
        "import importlib, json, sys\n"
        f"for m in {core!r}: importlib.import_module(m)\n"
        "roots = ('grpc', 'google', 'matplotlib', 'torch')\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in roots)))"
    )
    env, marker = _block_torch(tmp_path)
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [], "core modules loaded: " + out.stdout
    assert not marker.exists(), "a core module tried to import torch"
    for module, (_, extra) in OPTIONAL.items():
        out = _python(f"import {module}", env)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode == 1 and last.startswith("ModuleNotFoundError"), out.stderr
        assert f"pip install '{extra}'" in last, out.stderr


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed (make install-torch)")
def test_the_optional_core_modules_load_no_grpc_when_their_extra_is_installed() -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {sorted(OPTIONAL)!r}: importlib.import_module(m)\n"
        "roots = ('grpc', 'google', 'matplotlib')\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in roots)))"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [], "optional core modules loaded: " + out.stdout


def test_numpy_path_never_imports_torch(tmp_path: Path) -> None:
    """Server set-up, worker compute and a numpy model never import torch (moved here from
    tests/test_torch.py, which skips as a whole without torch; this needs none)."""
    code = (
        "import sys\n"
        "from hgo_common import models, datasets, aggregators, attacks\n"
        "import hgo_server.setup, hgo_worker.compute\n"
        "m = models.create('mlp', n_features=4, n_classes=3)\n"
        "print('torch' in sys.modules)\n"
    )
    env, marker = _block_torch(tmp_path)
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and not marker.exists()


@pytest.mark.parametrize("entry", ["hgo_server.cli", "hgo_worker.cli"])
def test_server_and_worker_load_no_plotting_and_not_each_other(entry: str) -> None:
    other = "hgo_worker" if entry.startswith("hgo_server") else "hgo_server"
    code = (
        f"import json, sys, {entry}\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert "matplotlib" not in loaded and "hgo_lab" not in loaded and other not in loaded, sorted(loaded)
