"""The ``hgo-experiment`` command line: ``run``, ``list`` and ``report``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hgo_lab.experiment.executor import default_jobs, make_executor
from hgo_lab.experiment.report import clock_of_mode, report
from hgo_lab.experiment.runner import run_scenario
from hgo_lab.experiment.scenario import SCENARIOS, Scenario, load_scenario
from hgo_lab.experiment.stats import read_summary

DESCRIPTION = "hgo-experiment: reproduce the paper's figures 3–8 (Boubouh et al., SRDS 2022, §6)."


def _description() -> str:
    return DESCRIPTION


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hgo-experiment", description=_description())
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario (a packaged name such as fig5, or a path to a TOML file)")
    r.add_argument("scenario", help="scenario name (fig3..fig8) or path to a TOML file")
    r.add_argument(
        "--mode",
        choices=("sim", "net"),
        default="sim",
        help="sim: the in-process simulator (virtual clock; default); net: a real hgo-server and "
        "hgo-worker processes over gRPC on this machine (wall clock)",
    )
    r.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scenario's)")
    r.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: results/NAME-MODE, or results/NAME-quick-MODE with --quick, "
        "e.g. results/fig5-sim)",
    )
    r.add_argument(
        "--first-seed",
        type=_whole_number(0),
        default=0,
        metavar="K",
        help="seed index of the first run (default 0): --seeds 10 --first-seed 10 runs seeds 10-19, "
        "ten seeds none of the scenario's default runs used",
    )
    r.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    r.add_argument("--quick", action="store_true", help="use the scenario's reduced [quick] setting")
    r.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the centralized scikit-learn reference (details.json 'reference': {}); it is the "
        "same for every variant, so a figure run one variant at a time needs it once",
    )
    r.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="LABEL",
        help="run only the variant with this label (repeat for several; default: all of them)",
    )
    r.add_argument(
        "--jobs",
        type=_whole_number(1),
        default=None,
        metavar="N",
        help=f"simulated runs (variant x seed) at once in N processes on this machine (default: the "
        f"cores, here {default_jobs()}); with --ray, the CPUs of a Ray started here; --mode net runs "
        "one after another",
    )
    r.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run the simulated runs on Ray (pip install 'hgo[ray]'): 'auto' (a running cluster), "
        "ray://HOST:10001 (Ray client), or no ADDRESS for a Ray started here and stopped after",
    )
    sub.add_parser("list", help="list the packaged scenarios")
    rep = sub.add_parser("report", help="markdown table of the final values in a run's summary.csv")
    rep.add_argument(
        "out", type=Path, nargs="+", help="output directories of 'run' (several: all their variants in one)"
    )
    rep.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="PREFIX",
        help="also draw the figure from the directories' round logs, a curve per variant (mean over "
        "seeds, 95 %% band): PREFIX_METRIC_vs_round.png and PREFIX_METRIC_vs_time.png",
    )
    rep.add_argument("--metric", default="accuracy")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for p in sorted(SCENARIOS.glob("*.toml")):
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
            print(f"{p.stem:8s} {doc.get('title', '')}")
        return 0
    if args.cmd == "report":
        rows: list[dict[str, Any]] = []
        det: dict[str, Any] | None = None
        first: Path | None = None
        labels: dict[str, Path] = {}  # each variant and the directory that holds its logs
        metas = {d: _run_meta(d) for d in args.out}
        for d in args.out:
            try:
                rows += read_summary(d / "summary.csv")
                det_path = d / "details.json"
                if det_path.is_file():
                    one = json.loads(det_path.read_text(encoding="utf-8"))
                    # written before details.json recorded its clock: run.json's mode says which
                    one.setdefault("clock", clock_of_mode(metas[d].get("mode", "sim")))
                    labels.update(dict.fromkeys(one["variants"], d))
                    if det is None:
                        det, first = one, d
                    elif one["clock"] != det["clock"]:
                        print(
                            f"hgo-experiment: cannot report {first} ({det['clock']} clock) and {d} "
                            f"({one['clock']} clock) in one table: their times are not comparable; "
                            "report simulator runs and runs over the wire separately",
                            file=sys.stderr,
                        )
                        return 2
                    else:  # the variants of a figure run one at a time (run --variant)
                        det["variants"].update(one["variants"])
            except (OSError, ValueError, KeyError) as exc:
                print(f"hgo-experiment: cannot read the summary of {d}: {exc}", file=sys.stderr)
                return 2
        print(report(rows, args.metric, details=det))
        if args.plot is not None:
            return _plot(labels, metas, args.metric, det or {}, args.plot, args.out[0])
        return 0
    try:
        sc = load_scenario(args.scenario, quick=args.quick, rounds=args.rounds, seeds=args.seeds)
        if args.variant:
            sc = select_variants(sc, args.variant)
        if args.no_reference:
            sc = dataclasses.replace(sc, reference=False)
        if args.first_seed:
            sc = dataclasses.replace(sc, first_seed=args.first_seed)
    except (ValueError, FileNotFoundError) as exc:  # ScenarioError is a ValueError
        print(f"hgo-experiment: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / (sc.name + ("-quick" if args.quick else "") + f"-{args.mode}")
    from hgo_common.plugins import PluginError

    n_runs = len(sc.variants) * sc.seeds
    try:
        executor = make_executor(args.jobs, args.ray, n_runs)
    except ImportError as exc:
        print(f"hgo-experiment: {exc}", file=sys.stderr)
        return 2
    try:
        res = run_scenario(sc, out, mode=args.mode, executor=executor)
    except PluginError as exc:  # a plug-in model that fails its probe on the real data width
        print(f"hgo-experiment: {sc.path}: {exc}", file=sys.stderr)
        return 2
    return 1 if res["failed"] else 0


def _plot(
    labels: dict[str, Path],
    metas: dict[Path, dict[str, Any]],
    metric: str,
    det: dict[str, Any],
    prefix: Path,
    first: Path,
) -> int:
    """``report --plot``: the figure of the variants in ``labels`` from their round logs (the seed
    indices each directory ran, from its ``run.json``; a seed that failed has no log)."""
    from hgo_common import roundlog
    from hgo_lab import plots
    from hgo_lab.experiment.plots import plot_runs
    from hgo_lab.experiment.runner import log_path

    if not plots.available():
        print("hgo-experiment: --plot needs matplotlib (pip install 'hgo[lab]')", file=sys.stderr)
        return 2
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    for label, d in labels.items():
        lo = int(metas[d].get("first_seed", 0))
        paths = [log_path(d / "logs", label, k) for k in range(lo, lo + int(metas[d].get("seeds", 0)))]
        runs[label] = [roundlog.read(p) for p in paths if p.is_file()]
    name = metas[first].get("name", first.name)
    seeds = sorted({len(v) for v in runs.values()})
    title = f"{name}, {'/'.join(map(str, seeds))} seeds"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for png in plot_runs(runs, metric, title, prefix, clock=det.get("clock", "virtual")):
        print(f"wrote {png}")
    return 0


def _run_meta(out: Path) -> dict[str, Any]:
    """A run directory's ``run.json`` (mode, name, seeds, first seed); empty when it has none."""
    try:
        meta = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def select_variants(sc: Scenario, labels: Sequence[str]) -> Scenario:
    """The scenario cut to the variants named by ``labels``, in the file's order.

    A CPU budget may not cover every curve of a figure at the paper's seed count; this runs
    the chosen curves with the same settings and seeds as the whole file would.

    Raises
    ------
    ValueError
        A label that no variant of the scenario has (the message lists the labels it has).
    """
    known = [v.label for v in sc.variants]
    unknown = [lab for lab in labels if lab not in known]
    if unknown:
        raise ValueError(
            f"{sc.path}: no variant labelled {', '.join(repr(u) for u in unknown)}; "
            f"the variants are {', '.join(repr(k) for k in known)}"
        )
    wanted = set(labels)
    return dataclasses.replace(sc, variants=[v for v in sc.variants if v.label in wanted])


def _whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number >= ``minimum``, or an error naming the value given."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {n}")
        return n

    return parse
