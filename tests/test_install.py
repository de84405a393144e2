"""A plain (non-editable) install works from any directory.

The wheel is built from this checkout and installed into a fresh virtual environment
outside it; the environment borrows the test venv's third-party packages (a ``.pth``
file) so that nothing is downloaded, but HGO itself comes only from the wheel. Then,
from an empty directory: ``hgo-experiment list`` shows the packaged scenarios and
``hgo-experiment run fig5 --quick`` runs; the wheel holds the scenario files and the
stubs' type hints, and no test or plotting module.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv where HGO is installed from its wheel."""
    base = tmp_path_factory.mktemp("install")
    wheels = base / "wheels"
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                str(ROOT)], base)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = wheels.glob("hgo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("hgo_lab/scenarios/fig5.toml") for n in names), names
    assert any(n.endswith("hgo_common/net/proto/hgo_pb2.pyi") for n in names)
    assert not any(n.startswith("tests/") for n in names)
    venv = base / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base).returncode == 0
    target = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # Third-party packages from the test venv, HGO from the wheel only: the editable
    # install's finder is a .pth of the test venv, which a .pth-added path does not run.
    (target / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    res = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                "--no-index", str(wheel)], base)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return venv / "bin"


def test_hgo_is_imported_from_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    code = "import json, hgo_lab, hgo_server; print(json.dumps([hgo_lab.__file__, hgo_server.__file__]))"
    res = _run([str(installed / "python"), "-c", code], tmp_path)
    assert res.returncode == 0, res.stderr
    for path in json.loads(res.stdout):
        assert not Path(path).is_relative_to(ROOT), path


def test_experiment_list_and_quick_fig5_from_any_directory(installed: Path, tmp_path: Path) -> None:
    listed = _run([str(installed / "hgo-experiment"), "list"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert {"fig3", "fig4", "fig5", "fig6", "fig7", "fig8"} <= names, listed.stdout
    out = tmp_path / "fig5"
    res = _run([str(installed / "hgo-experiment"), "run", "fig5", "--quick", "--seeds", "1", "--rounds", "20",
                "--out", str(out)], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (out / "summary.csv").is_file()
    from hgo_lab import experiment

    logs = sorted((out / "logs").glob("*.jsonl.gz"))
    variants = experiment.load_scenario("fig5", quick=True).variants
    assert len(logs) == len(variants) >= 4, logs  # one log per variant x 1 seed
