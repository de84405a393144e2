"""Side by side with Flower 1.42: the same MLP on the same digits shards, FedAvg vs HGO's average.

Run: ``.venv/bin/python bench/bench_flower.py --nodes 10 --trials 2`` (minutes: Flower's
rounds take seconds each here). Not part of CI or ``make bench``; docs/benchmarks.md
"## Side by side with Flower" records it with the command.

* Flower: builds its own virtualenv ``bench/.flower-venv`` (git-ignored) with
  ``flwr==1.42.0`` on first use (its protobuf pin conflicts with HGO's), then per trial one
  ``flower-superlink`` (``--insecure``, one HTTP port for Fleet, Control and Runtime,
  runtime dependency installation off) and N ``flower-supernode`` processes (each its own
  ``--port``, ``--node-config "partition-id=i num-partitions=N"``) on 127.0.0.1, and
  ``flwr run bench/flower_app <connection>`` with the connection written to
  ``$FLWR_HOME/config.toml``. The app (bench/flower_app) uses HGO's own model, data split
  and shards (hgo_common through PYTHONPATH); each client takes one SGD step on a
  mini-batch of 32 and returns its weights, FedAvg averages them with equal weights.
* HGO: ``hgo-run --workers N --rule average --tau inf`` with unthrottled workers
  (``--rate 0``), the same MLP (64-318-10, d = 23,860), digits, batch 32, lr.

Both run one after the other per trial (interleaved: Flower, HGO, Flower, HGO, ...).
Printed per run: seconds per round (median over rounds, and mean), wall time (launch to
last process gone), peak RSS summed over every process of the run (each sample sums
VmRSS of the launched processes and all their descendants, every 0.25 s), final test
accuracy. A Flower run is stopped (and reported unfinished) if the machine's MemAvailable
falls below ``--min-free-gib`` (N = 10 peaks at ~5 GiB here, docs/benchmarks.md; the
machine is shared). Telemetry is off (``FLWR_TELEMETRY_ENABLED=0``); all traffic is on
loopback; every process runs in its own process group and is killed at the end of its run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT, killall, spawn

HERE = Path(__file__).resolve().parent
VENV = HERE / ".flower-venv"
APP = HERE / "flower_app"
FLWR_VERSION = "1.42.0"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------- the Flower venv


def ensure_venv(venv: Path) -> Path:
    """``venv`` with flwr==1.42.0, numpy and scikit-learn (created on first use); its bin/."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import flwr, sklearn; print(flwr.__version__)"]
    if py.exists():
        ok = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        if ok.returncode == 0 and ok.stdout.strip() == FLWR_VERSION:
            return venv / "bin"
    print(f"building {venv} with flwr=={FLWR_VERSION} (one-off, a few minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
    pkgs = [f"flwr=={FLWR_VERSION}", "numpy", "scikit-learn"]
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *pkgs], check=True, timeout=1200)
    out = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    if out != FLWR_VERSION:
        raise RuntimeError(f"{venv}: expected flwr {FLWR_VERSION}, got {out!r}")
    return venv / "bin"


# ---------------------------------------------------------------------- process accounting


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssPeak:
    """Peak over time of the summed RSS of some root processes and all their descendants."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.peak_kib = 0
        self.peak_procs = 0

    def sample(self) -> None:
        kids = _children_map()
        seen: set[int] = set()
        todo = list(self.roots)
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            todo += kids.get(pid, [])
        total = sum(_rss_kib(p) for p in seen)
        if total > self.peak_kib:
            self.peak_kib, self.peak_procs = total, len(seen)


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- one Flower run


def run_flower(fbin: Path, work: Path, nodes: int, rounds: int, lr: float, timeout_s: float,
               min_free_gib: float) -> dict[str, Any]:  # fmt: skip
    home = work / "flwr-home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = _free_port()
    # the federation address flwr run uses: connection "bench" in $FLWR_HOME/config.toml
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    out = work / "flower_rounds.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "PYTHONPATH": str(ROOT),
           "OPENBLAS_NUM_THREADS": "1", "PATH": f"{fbin}:{os.environ.get('PATH', '')}"}  # fmt: skip
    env.pop("VIRTUAL_ENV", None)
    rss = RssPeak()
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.time()
    try:
        link = spawn([str(fbin / "flower-superlink"), "--insecure", "--port", str(port),
                      "--disable-runtime-dependency-installation"], work / "superlink.log", env)  # fmt: skip
        procs.append(link)
        rss.roots.append(link.pid)
        _wait_port(port, procs, 60)
        for i in range(nodes):
            node = spawn([str(fbin / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                          "--port", str(_free_port()),
                          "--node-config", f"partition-id={i} num-partitions={nodes}"],
                         work / f"supernode-{i}.log", env)  # fmt: skip
            procs.append(node)
            rss.roots.append(node.pid)
        cfg = f'num-server-rounds={rounds} lr={lr} num-nodes={nodes} out="{out}"'
        run = spawn([str(fbin / "flwr"), "run", str(APP), "bench", "--run-config", cfg, "--stream"],
                    work / "flwr-run.log", env)  # fmt: skip
        procs.append(run)
        rss.roots.append(run.pid)
        t_end = time.monotonic() + timeout_s
        done, why = False, "timeout"
        while time.monotonic() < t_end:
            rss.sample()
            if mem_available_gib() < min_free_gib:  # the machine is shared: never push it into OOM
                why = f"stopped: MemAvailable below {min_free_gib:g} GiB"
                break
            if out.exists():
                try:
                    log = json.loads(out.read_text())
                except json.JSONDecodeError:
                    log = {}
                if log.get("done"):
                    done = True
                    break
            if link.poll() is not None:
                why = "superlink exited"
                break
            time.sleep(0.25)
        wall = time.time() - t0
    finally:
        killall(procs)
    log = json.loads(out.read_text()) if out.exists() else {"rounds": []}
    ts = [r["t"] for r in log["rounds"]]  # round 0 (before training), then after each round
    per = list(np.diff(ts))
    return {
        "system": "flower", "nodes": nodes, "rounds_done": max(0, len(ts) - 1), "rounds": rounds,
        "finished": done, "why": "" if done else why,
        "s_per_round_p50": float(np.median(per)) if per else float("nan"),
        "s_per_round_mean": float(np.mean(per)) if per else float("nan"), "wall_s": wall,
        "peak_rss_gib": rss.peak_kib / 2**20, "peak_procs": rss.peak_procs,
        "accuracy": log["rounds"][-1]["accuracy"] if log["rounds"] else float("nan"),
    }  # fmt: skip


def _wait_port(port: int, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("flower-superlink exited before listening")
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not listen on {port} within {timeout:g} s")


# ---------------------------------------------------------------------- one HGO run


def run_hgo(work: Path, nodes: int, rounds: int, lr: float, per_process: int,
            timeout_s: float) -> dict[str, Any]:  # fmt: skip
    out = work / "hgo"
    argv = [str(BIN / "hgo-run"), "--workers", str(nodes), "--rule", "average", "--tau", "inf",
            "--rounds", str(rounds), "--dataset", "digits", "--model", "mlp", "--hidden", "318",
            "--batch-size", "32", "--lr", str(lr), "--eval-every", "0", "--worker-arg=--rate=0",
            "--sessions-per-process", str(per_process), "--out", str(out), "--no-progress",
            "--timeout", str(timeout_s)]  # fmt: skip
    rss = RssPeak()
    t0 = time.time()
    proc = spawn(argv, work / "hgo-run.log", {**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    rss.roots.append(proc.pid)
    try:
        while proc.poll() is None and time.time() - t0 < timeout_s + 30:
            rss.sample()
            time.sleep(0.25)
        wall = time.time() - t0
    finally:
        killall([proc])
    from hgo_common import roundlog

    recs = roundlog.read(out / "round_log.jsonl")
    ms = [r["round_ms"] for r in recs]
    acc = [r["accuracy"] for r in recs if r.get("accuracy") is not None]
    return {
        "system": "hgo", "nodes": nodes, "rounds_done": len(recs), "rounds": rounds,
        "finished": proc.returncode == 0 and len(recs) == rounds,
        "s_per_round_p50": float(np.median(ms)) / 1000 if ms else float("nan"),
        "s_per_round_mean": float(recs[-1]["t"]) / len(recs) if recs else float("nan"), "wall_s": wall,
        "peak_rss_gib": rss.peak_kib / 2**20, "peak_procs": rss.peak_procs,
        "accuracy": acc[-1] if acc else float("nan"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10, help="SuperNodes / HGO workers N (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="Flower rounds per run (default 5)")
    p.add_argument("--hgo-rounds", type=int, default=100, help="HGO rounds per run (default 100)")
    p.add_argument("--trials", type=int, default=2, help="interleaved Flower/HGO pairs (default 2)")
    p.add_argument("--lr", type=float, default=1.0, help="learning rate of both (default 1.0, hgo-run's)")
    p.add_argument("--sessions-per-process", type=int, default=1, help="hgo-run --sessions-per-process")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run (default 900)")
    p.add_argument("--min-free-gib", type=float, default=3.0,
                   help="stop a Flower run when MemAvailable falls below this (default 3)")  # fmt: skip
    p.add_argument("--venv", type=Path, default=VENV, help=f"Flower's virtualenv (default {VENV})")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    if a.nodes < 2:
        p.error(f"--nodes must be >= 2 (FedAvg's minimum), got {a.nodes}")
    fbin = ensure_venv(a.venv)
    rows = []
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"# {stamp}  load average {os.getloadavg()}  N={a.nodes}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hgo-bench-flower-") as tmp:
        for trial in range(a.trials):
            for system in ("flower", "hgo"):
                work = Path(tmp) / f"{system}-{trial}"
                work.mkdir()
                if system == "flower":
                    r = run_flower(fbin, work, a.nodes, a.rounds, a.lr, a.timeout, a.min_free_gib)
                else:
                    r = run_hgo(work, a.nodes, a.hgo_rounds, a.lr, a.sessions_per_process, a.timeout)
                r["trial"] = trial
                r["loadavg"] = round(os.getloadavg()[0], 1)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if not r["finished"]:
                    logs = sorted(work.glob("*.log"))
                    print(f"  {system} did not finish; logs: {[str(x) for x in logs]}", flush=True)
                    keep = ROOT / "runs" / "bench_flower" / work.name
                    shutil.rmtree(keep, ignore_errors=True)
                    shutil.copytree(work, keep, ignore=shutil.ignore_patterns("flwr-home"))
                    print(f"  kept in {keep}", flush=True)
    print()
    hdr = (f"{'system':<7} {'N':>4} {'trial':>5} {'rounds':>9} {'s/round p50':>11} {'mean':>8} "
           f"{'wall s':>7} {'peak RSS GiB':>12} {'procs':>5} {'acc':>5} {'load':>5}")  # fmt: skip
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['system']:<7} {r['nodes']:>4} {r['trial']:>5} {r['rounds_done']:>4}/{r['rounds']:<4} "
              f"{r['s_per_round_p50']:>11.3f} {r['s_per_round_mean']:>8.3f} {r['wall_s']:>7.1f} "
              f"{r['peak_rss_gib']:>12.2f} {r['peak_procs']:>5} {r['accuracy']:>5.2f} "
              f"{r['loadavg']:>5}")  # fmt: skip
    fl = [r["s_per_round_p50"] for r in rows if r["system"] == "flower" and r["rounds_done"]]
    hg = [r["s_per_round_p50"] for r in rows if r["system"] == "hgo" and r["rounds_done"]]
    if fl and hg:
        ratio = np.median(fl) / np.median(hg)
        print(f"\nseconds per round, Flower / HGO (medians of the runs): {ratio:.0f}x")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
