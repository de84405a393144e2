"""Tables of a fleet-hw run (issue 21.4): what each profile really delivered, per variant.

    hgo-experiment run fleet-hw --mode net --out runs/fleet-hw     # as root
    python tools/fleet_hw_report.py runs/fleet-hw

Reads the experiment's round logs (``logs/*.jsonl.gz``, the server's schema) and
``details.json`` (final test accuracy per class, from each run's exported model) and prints
markdown:

* per variant: rounds, wall-clock time of the last round, final accuracy, accuracy at the
  first evaluation at or after a common time, accuracy on the weak-only classes (the
  ``hardware:W:C`` partition's C smallest labels) and on the others;
* per variant and profile: mean prefix delivered (coordinates, % of d), share of a profile's
  sampled rounds with a non-empty prefix, and the *delivered rate* λ̂ = prefix / τ in
  coordinates per ms (``hgo_lab.constraints.delivered_rates``: compute and link together, a
  lower bound for a device that sent all d before τ). For τ = ∞ the round's own length
  (``round_ms``, the slowest sampled device's) replaces τ, a lower bound for every device
  but the slowest. Beside it, the median of the rates the server *measured*
  (``observed_rate`` per worker entry: prefix over the time it took to deliver, from
  ``hgo_server.fedeval``) and of the workers' own reports (``rates.self_reported``: released
  coordinates over release time, from the worker's ``RoundMeter``), where the round log has them;
* the block |B_k| (mean, % of d), the share of a profile's sampled rounds in which its row
  was aggregated (``used``), and the bytes the server received from it during a round
  (the round log's ``bytes``: chunks of earlier rounds arriving late included) per
  ``round_ms``, in Mbit/s: a link kept busy with stale values shows here.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from hgo_common import roundlog
from hgo_lab.constraints import delivered_rates

PROFILES = ("weak", "average", "powerful")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def weak_classes(run: dict[str, Any], label: str) -> list[str]:
    part = str(run["variants"][label].get("partition", ""))
    if not part.startswith("hardware:"):
        return []
    return [str(c) for c in range(int(part.split(":")[2]))]


def accuracy_at(records: list[dict[str, Any]], t: float) -> float:
    """The first evaluation at or after wall time ``t`` (else the last one)."""
    evals = [r for r in records if r.get("accuracy") is not None]
    for r in evals:
        if float(r["t"]) >= t:
            return float(r["accuracy"])
    return float(evals[-1]["accuracy"]) if evals else math.nan


def profile_stats(records: list[dict[str, Any]], d: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    acc: dict[str, list[float]] = {p: [] for p in PROFILES}
    rates: dict[str, list[float]] = {p: [] for p in PROFILES}
    used: dict[str, list[float]] = {p: [] for p in PROFILES}
    mbit: dict[str, list[float]] = {p: [] for p in PROFILES}
    observed: dict[str, list[float]] = {p: [] for p in PROFILES}
    reported: dict[str, list[float]] = {p: [] for p in PROFILES}
    for rec in records:
        tau = rec.get("tau_ms")
        per = delivered_rates(rec) if tau else {}
        length = float(rec.get("round_ms") or 0.0)
        used_ids = set(rec.get("used") or [])
        for w in rec.get("workers", []):
            prof = str(w.get("profile"))
            if prof not in acc:
                continue
            prefix = float(w["prefix"])
            acc[prof].append(prefix)
            used[prof].append(1.0 if int(w["id"]) in used_ids else 0.0)
            if w.get("observed_rate") is not None:  # the server's measurement (hgo_server.fedeval)
                observed[prof].append(float(w["observed_rate"]))
            if length > 0:  # every chunk received from it during the round, late ones included
                mbit[prof].append(8.0 * float(w.get("bytes", 0)) / length / 1000.0)
            if per:
                rates[prof].append(per[int(w["id"])])
            elif length > 0:
                rates[prof].append(prefix / length)
        for dev in (rec.get("rates") or {}).get("self_reported", {}).get("devices", []):
            if str(dev.get("profile")) in reported and dev.get("rate") is not None:
                reported[str(dev["profile"])].append(float(dev["rate"]))
    for prof in PROFILES:
        xs = acc[prof]
        if not xs:
            continue
        out[prof] = {
            "prefix": sum(xs) / len(xs),
            "pct": 100.0 * sum(xs) / len(xs) / d,
            "nonempty": 100.0 * sum(1 for x in xs if x > 0) / len(xs),
            "rate": sum(rates[prof]) / len(rates[prof]) if rates[prof] else math.nan,
            "used": 100.0 * sum(used[prof]) / len(used[prof]),
            "mbit": _mean(mbit[prof]),
            "observed": _median(observed[prof]),
            "reported": _median(reported[prof]),
        }
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else math.nan


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the hgo-experiment output directory")
    p.add_argument(
        "--at", type=float, default=None, help="common wall time in s (default: the shortest run's end)"
    )
    a = p.parse_args(argv)
    run = json.loads((a.out / "run.json").read_text())
    details = json.loads((a.out / "details.json").read_text())["variants"]
    logs: dict[str, list[dict[str, Any]]] = {}
    for label in run["variants"]:
        path = a.out / "logs" / f"{_slug(label)}_seed0.jsonl.gz"
        if path.exists():
            logs[label] = roundlog.read(path)
    if not logs:
        print(f"no round logs under {a.out / 'logs'}", file=sys.stderr)
        return 1
    d = max(int(w["prefix"]) for recs in logs.values() for r in recs for w in r.get("workers", []))
    t_common = a.at if a.at is not None else min(float(recs[-1]["t"]) for recs in logs.values())
    print(f"d = {d} (the longest prefix delivered); common time {t_common:.1f} s\n")
    head = ("variant", "rounds", "wall s", "final acc", f"acc at {t_common:.0f} s", "weak-only classes",
            "other classes", "block % of d")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for label, recs in logs.items():
        pc = details.get(label, {}).get("seeds", [{}])[0].get("per_class", {})
        weak = weak_classes(run, label)
        wk = [pc[c] for c in weak if c in pc]
        other = [v for c, v in pc.items() if c not in weak]
        evals = [r for r in recs if r.get("accuracy") is not None]
        blocks = [float(r["block"]) for r in recs if r.get("block") is not None]
        final = float(evals[-1]["accuracy"]) if evals else math.nan
        cells = [label, str(len(recs)), f"{float(recs[-1]['t']):.1f}", f"{final:.3f}",
                 f"{accuracy_at(recs, t_common):.3f}", f"{_mean(wk):.3f}", f"{_mean(other):.3f}",
                 f"{100.0 * _mean(blocks) / d:.1f}"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print("\nPer profile: mean prefix (% of d), share of sampled rounds with a non-empty prefix, "
          "delivered rate prefix/tau in coordinates per ms (tau = inf: prefix / round_ms), "
          "share of sampled rounds whose row was aggregated, bytes received from it per round "
          "(late chunks of earlier rounds included) over the round's length:\n")  # fmt: skip
    print("| variant | " + " | ".join(PROFILES) + " |")
    print("|---|" + "---|" * len(PROFILES))
    for label, recs in logs.items():
        st = profile_stats(recs, d)
        cells = []
        for prof in PROFILES:
            s = st.get(prof)
            cells.append(
                "—" if s is None else
                f"{s['prefix']:,.0f} ({s['pct']:.1f} %), non-empty {s['nonempty']:.0f} %, "
                f"λ̂ {s['rate']:.1f}/ms, observed {s['observed']:.1f}/ms, "
                f"self-reported {s['reported']:.1f}/ms, "
                f"used {s['used']:.0f} %, received {s['mbit']:.2f} Mbit/s"
            )  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
