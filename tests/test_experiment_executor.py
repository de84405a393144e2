"""hgo-experiment's executors (issue 23.1): a process pool (``--jobs``) and Ray (``--ray``) give
the same per-seed results as one run after another (the simulator is deterministic), and a
failed run is reported with its traceback while the others finish, whichever executor runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hgo_common import roundlog
from hgo_lab import experiment
from hgo_lab.experiment import executor

SMALL = """
name = "small"
title = "small scenario"
seeds = 2

[base]
model = "logistic"
dataset = "breast-cancer"
n = 8
q = 6
f = 1
attack = "foe"
tau_ms = 60
lr = 0.3
rounds = 12
eval_every = 4

[[variant]]
label = "average"
rule = "average"

[[variant]]
label = "median"
rule = "median"
"""


def _logs(out: Path) -> dict[str, list[dict[str, object]]]:
    return {p.name: roundlog.read(p) for p in sorted((out / "logs").iterdir())}


def _per_seed(out: Path) -> dict[str, object]:
    det = json.loads((out / "details.json").read_text())
    return {label: v["seeds"] for label, v in det["variants"].items()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The scenario run one run after another in this process (the reference)."""
    root = tmp_path_factory.mktemp("seq")
    scen = root / "small.toml"
    scen.write_text(SMALL)
    out = root / "out"
    assert experiment.main(["run", str(scen), "--out", str(out), "--jobs", "1"]) == 0
    assert json.loads((out / "run.json").read_text())["executor"] == "inline"
    assert len(_logs(out)) == 4
    return scen, out


def test_jobs_2_gives_the_sequential_per_seed_results(sequential: tuple[Path, Path], tmp_path: Path) -> None:
    scen, ref = sequential
    out = tmp_path / "pool"
    assert experiment.main(["run", str(scen), "--out", str(out), "--jobs", "2"]) == 0
    assert json.loads((out / "run.json").read_text())["executor"] == "pool"
    assert _logs(out) == _logs(ref)
    assert _per_seed(out) == _per_seed(ref)
    assert (out / "summary.csv").read_text() == (ref / "summary.csv").read_text()


@pytest.mark.slow  # starts a local Ray: about 20 s here
def test_ray_gives_the_sequential_per_seed_results(sequential: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'hgo[ray]' (make install-ray)")
    scen, ref = sequential
    out = tmp_path / "ray"
    # --ray without an address starts a local Ray (num_cpus = --jobs, no dashboard) and stops it.
    assert experiment.main(["run", str(scen), "--out", str(out), "--jobs", "2", "--ray"]) == 0
    assert json.loads((out / "run.json").read_text())["executor"] == "ray"
    assert _logs(out) == _logs(ref)
    assert _per_seed(out) == _per_seed(ref)
    import ray

    assert not ray.is_initialized()  # the Ray it started is stopped


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_failed_run_is_reported_with_its_traceback_and_the_others_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: str
) -> None:
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "phishing.txt").write_text("garbage,1,2\n")  # not LIBSVM: the data loader raises
    scen = tmp_path / "broken.toml"
    broken = f'\n[[variant]]\nlabel = "broken"\ndataset = "phishing"\ndata_dir = "{bad}"\n'
    scen.write_text(SMALL + broken)
    out = tmp_path / "out"
    assert experiment.main(["run", str(scen), "--out", str(out), "--jobs", jobs]) == 1
    text = capsys.readouterr().out
    for s in (0, 1):
        assert f"broken seed {s} FAILED:\nTraceback (most recent call last):" in text
    assert "DataFileError" in text and "bad label 'garbage,1,2'" in text
    assert "2 of 6 runs FAILED: broken seed 0, broken seed 1" in text
    meta = json.loads((out / "run.json").read_text())
    assert sorted((x["variant"], x["seed"]) for x in meta["failed"]) == [("broken", 0), ("broken", 1)]
    assert all("DataFileError" in x["error"] for x in meta["failed"])
    # the other runs finished and are in the statistics; the failed variant is not
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "average_seed0.jsonl.gz", "average_seed1.jsonl.gz", "median_seed0.jsonl.gz", "median_seed1.jsonl.gz",
    ]  # fmt: skip
    variants = {line.split(",")[0] for line in (out / "summary.csv").read_text().splitlines()[1:]}
    assert variants == {"average", "median"}


def test_bad_jobs_and_missing_ray_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        experiment.main(["run", "fig5", "--jobs", "0"])
    assert info.value.code == 2
    assert "expected a whole number >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        executor.PoolExecutor(0)
    try:
        import ray  # noqa: F401
    except ImportError:
        assert experiment.main(["run", "fig5", "--quick", "--ray"]) == 2
        assert "pip install 'hgo[ray]'" in capsys.readouterr().err


def test_default_jobs_follow_the_cores() -> None:
    n = executor.default_jobs()
    assert n >= 1
    assert isinstance(executor.make_executor(None, None, n_tasks=1), executor.InlineExecutor)
    pool = executor.make_executor(2, None, n_tasks=4)
    assert isinstance(pool, executor.PoolExecutor) and pool.jobs == 2
    assert isinstance(executor.make_executor(1, None, n_tasks=4), executor.InlineExecutor)
    default = executor.make_executor(None, None, n_tasks=4)
    assert isinstance(default, executor.InlineExecutor if n == 1 else executor.PoolExecutor)


def test_progress_counts_runs_in_progress_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool reports rounds of several runs at once: the share and the ETA count all of
    them, and a report that arrives after its run ended is not counted twice."""
    import io

    lines: list[str] = []
    clock = iter([0.0] + [10.0] * 20)
    monkeypatch.setattr(experiment.time, "monotonic", lambda: next(clock))
    prog = experiment.Progress("figX", total_runs=4, total_rounds=80, echo=lines.append, stream=io.StringIO())
    prog.round_done(n=5, run="a seed 0")
    prog.round_done(n=15, run="a seed 1")
    assert prog.line().startswith("run 2/4")
    assert "25%" in prog.line() and "ETA 0:30" in prog.line()  # 20 of 80 rounds in 10 s
    prog.end_run(20, "a seed 1: done", label="a seed 1")
    prog.round_done(n=3, run="a seed 1")  # late: already counted by end_run
    assert lines[-1].startswith("[figX] a seed 1: done | run 2/4 a seed 1 | 31%")  # 20 + 5 of 80
