"""The ``hgo-experiment`` command line: ``run``, ``list`` and ``report``."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from hgo_lab.experiment.report import report
from hgo_lab.experiment.runner import run_scenario
from hgo_lab.experiment.scenario import SCENARIOS, load_scenario
from hgo_lab.experiment.stats import read_summary


def _description() -> str:
    from hgo_lab import experiment

    return (experiment.__doc__ or "").split("\n\n")[0]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hgo-experiment", description=_description())
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario (a packaged name such as fig5, or a path to a TOML file)")
    r.add_argument("scenario", help="scenario name (fig3..fig8) or path to a TOML file")
    r.add_argument("--mode", choices=("sim", "net"), default="sim")
    r.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the scenario's)")
    r.add_argument("--out", type=Path, default=None, help="output directory (default results/NAME[-quick])")
    r.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    r.add_argument("--quick", action="store_true", help="use the scenario's reduced [quick] setting")
    sub.add_parser("list", help="list the packaged scenarios")
    rep = sub.add_parser("report", help="markdown table of the final values in a run's summary.csv")
    rep.add_argument("out", type=Path, help="an output directory of 'run'")
    rep.add_argument("--metric", default="accuracy")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for p in sorted(SCENARIOS.glob("*.toml")):
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
            print(f"{p.stem:8s} {doc.get('title', '')}")
        return 0
    if args.cmd == "report":
        try:
            det_path = args.out / "details.json"
            det = json.loads(det_path.read_text(encoding="utf-8")) if det_path.is_file() else None
            print(report(read_summary(args.out / "summary.csv"), args.metric, details=det))
        except (OSError, ValueError, KeyError) as exc:
            print(f"hgo-experiment: cannot read the summary of {args.out}: {exc}", file=sys.stderr)
            return 2
        return 0
    try:
        sc = load_scenario(args.scenario, quick=args.quick, rounds=args.rounds, seeds=args.seeds)
    except (ValueError, FileNotFoundError) as exc:  # ScenarioError is a ValueError
        print(f"hgo-experiment: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("results") / (sc.name + ("-quick" if args.quick else "") + f"-{args.mode}")
    from hgo_common.plugins import PluginError

    try:
        run_scenario(sc, out, mode=args.mode)
    except PluginError as exc:  # a plug-in model that fails its probe on the real data width
        print(f"hgo-experiment: {sc.path}: {exc}", file=sys.stderr)
        return 2
    return 0
