"""examples/hgo-example-plugin, installed with pip, run end to end without editing HGO.

The package is installed by pip (``--target`` a temporary folder, ``--no-deps``: hgo is
already in this venv) and put on ``PYTHONPATH`` for the processes, so that its entry
points (hgo.models, hgo.rules, hgo.datasets, hgo.attacks) are what an installed
plug-in's are, while this venv stays untouched for the other tests.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, ProcessGroup, console, free_port

EXAMPLE = ROOT / "examples" / "hgo-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    src = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (target / "hgo_example_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def _final(summary_csv: Path) -> dict[str, float]:
    rows = list(csv.DictReader(summary_csv.open()))
    last: dict[str, tuple[int, float]] = {}
    for r in rows:
        if r["metric"] == "accuracy" and int(r["round"]) >= last.get(r["variant"], (-1, 0.0))[0]:
            last[r["variant"]] = (int(r["round"]), float(r["mean"]))
    return {k: v for k, (_, v) in last.items()}


def test_hgo_plugins_lists_the_installed_package(installed: dict[str, str], procs: ProcessGroup) -> None:
    p = procs.start(console("hgo-plugins"), name="list", env=installed)
    assert procs.wait(p, timeout=60) == 0
    out = procs.log(p)
    for kind, name, target in [
        ("model", "softmax", "hgo_example_plugin.models:SoftmaxRegression"),
        ("rule", "clipped-mean", "hgo_example_plugin.rules:clipped_mean"),
        ("dataset", "blobs", "hgo_example_plugin.data:blobs"),
        ("attack", "random-sign", "hgo_example_plugin.attacks:random_sign"),
    ]:
        line = next(x for x in out.splitlines() if x.split()[:2] == [kind, name])
        assert "entry point" in line and target in line and "[hgo-example-plugin 0.1.0]" in line


def test_hgo_run_with_the_plugins(installed: dict[str, str], procs: ProcessGroup, tmp_path: Path) -> None:
    """Model, dataset, rule and attack all from the plug-in package, over gRPC."""
    out = tmp_path / "run"
    argv = [
        *console("hgo-run"), "--dataset", "blobs", "--model", "softmax", "--rule", "clipped-mean",
        "--workers", "7", "--attackers", "2", "--attack", "random-sign", "--rounds", "60",
        "--lr", "0.5", "--eval-every", "20", "--no-progress", "--timeout", "120", "--out", str(out),
    ]  # fmt: skip
    run = procs.start(argv, name="hgo-run", env=installed)
    assert procs.wait(run, timeout=180) == 0, procs.log(run)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dim"] == 4 * 10 + 4 and summary["worker_exit_codes"] == [0] * 7
    assert summary["metric"] > 0.6, summary  # 4 classes: chance is 0.25 (about 0.87 when all goes well)
    records = [json.loads(x) for x in (out / "round_log.jsonl").read_text().splitlines()]
    assert {r["rule"] for r in records} == {"clipped-mean"}
    assert sum(w["byzantine"] for w in records[-1]["workers"]) == 2


@pytest.mark.parametrize("mode", ["sim", "net"])
def test_hgo_experiment_with_the_plugins(
    installed: dict[str, str], procs: ProcessGroup, tmp_path: Path, mode: str
) -> None:
    """The example scenario (only plug-in names): the plug-in rule withstands the plug-in
    attack that breaks averaging, in the simulator and with real processes."""
    out = tmp_path / mode
    argv = [*console("hgo-experiment"), "run", str(EXAMPLE / "scenario.toml"), "--mode", mode,
            "--seeds", "1", "--out", str(out)]  # fmt: skip
    run = procs.start(argv, name=f"experiment-{mode}", env=installed)
    assert procs.wait(run, timeout=240) == 0, procs.log(run)[-4000:]
    final = _final(out / "summary.csv")
    assert final["clipped-mean"] > 0.7, final  # chance 0.25; 0.87 measured (docs/plugins.md)
    assert final["average"] < 0.3, final


def test_a_worker_without_the_package_is_told_what_to_install(
    installed: dict[str, str], procs: ProcessGroup
) -> None:
    # The server waits for 2 workers, so the bare one is welcomed (and leaves) before
    # training starts; two with the package then train to the end.
    port = free_port()
    server = procs.start(
        [*console("hgo-server"), "--port", str(port), "--dataset", "blobs", "--q", "1", "--min-workers", "2",
         "--rounds", "8", "--tau", "250", "--no-early-close"],
        name="server",
        env=installed,
    )  # fmt: skip
    allow = ["--allow-plugin", "softmax"]  # the operator trusts it; this worker lacks the package
    bare = procs.start(
        [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--reconnect-timeout", "30", *allow],
        name="bare",
    )
    assert procs.wait(bare, timeout=60) == 2, procs.log(bare)
    log = procs.log(bare)
    assert "the server trains model 'softmax' from plug-in hgo-example-plugin 0.1.0" in log, log
    assert "install hgo-example-plugin==0.1.0" in log and "Traceback" not in log
    oks = [
        procs.start(
            [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", *allow], name=f"ok{i}", env=installed
        )
        for i in range(2)
    ]
    for ok in oks:
        assert procs.wait(ok, timeout=90) == 0, procs.log(ok)
    assert procs.wait(server, timeout=30) == 0, procs.log(server)
