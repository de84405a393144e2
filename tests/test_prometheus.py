"""Prometheus configs (promtool), the Grafana dashboard, and every dashboard query on live data.

The live test runs the Compose topology as processes (tests/compose_run.py), starts the
Debian ``prometheus`` binary on a free port with a config generated from
deploy/prometheus.yml (the Compose DNS service discovery replaced by the live addresses),
and evaluates every PromQL expression of deploy/grafana/dashboards/hgo.json through
``/api/v1/query``: each must return a non-empty result.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_run import load_compose, make_topology, status, wait_for
from tests.procs import ROOT, ProcessGroup, free_port

PROM_CONFIG = ROOT / "deploy" / "prometheus.yml"
K8S_PROMETHEUS = ROOT / "deploy" / "k8s" / "base" / "prometheus.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "hgo.json"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVIDER = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "hgo.yml"

# docs/protocol.md "Prometheus metric names"
SERVER_METRICS = {
    "hgo_rounds_total", "hgo_rounds_without_quorum_total", "hgo_round_duration_seconds", "hgo_round",
    "hgo_tau_seconds", "hgo_block_coordinates", "hgo_prefix_coordinates", "hgo_sampled_workers",
    "hgo_responded_workers", "hgo_late_chunks_total", "hgo_rejected_messages_total", "hgo_active_sessions",
    "hgo_test_accuracy", "hgo_test_loss", "hgo_aggregation_seconds", "hgo_received_bytes_total",
    "hgo_sent_bytes_total", "hgo_run_info",
}  # fmt: skip
WORKER_METRICS = {
    "hgo_worker_rounds_total", "hgo_worker_coordinates_computed_total", "hgo_worker_coordinates_sent_total",
    "hgo_worker_rate_per_second", "hgo_worker_reconnects_total", "hgo_worker_connected",
}  # fmt: skip
HISTOGRAMS = {"hgo_round_duration_seconds", "hgo_prefix_coordinates", "hgo_aggregation_seconds"}

# Grafana's $__rate_interval is max(4 x scrape interval, step + scrape interval); the live
# test scrapes every second.
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "5s"


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    return exe


def _prometheus() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus not installed (Debian package `prometheus`; .ci/run installs it)")
    return exe


def render(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    """A dashboard expression as Grafana sends it: every run selected, $__rate_interval filled in."""
    return expr.replace("$__rate_interval", rate_interval).replace("$run", ".+")


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bhgo_[a-z_]+", expr))
    base = set()
    for n in names:
        stem = re.sub(r"_(bucket|sum|count)$", "", n)
        base.add(stem if stem in HISTOGRAMS else n)
    return base


def test_promtool_accepts_the_compose_config(tmp_path: Path) -> None:
    res = subprocess.run([_promtool(), "check", "config", str(PROM_CONFIG)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    # a broken config is refused: the check is real
    broken = tmp_path / "broken.yml"
    broken.write_text(PROM_CONFIG.read_text().replace("scrape_interval: 5s", "scrape_interval: five"))
    res = subprocess.run([_promtool(), "check", "config", str(broken)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode != 0


def test_promtool_accepts_the_kubernetes_config(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(K8S_PROMETHEUS.read_text()))
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    path = tmp_path / "prometheus.yml"
    path.write_text(cm["data"]["prometheus.yml"])
    res = subprocess.run([_promtool(), "check", "config", str(path)], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["hgo-server"]["static_configs"][0]["targets"] == ["hgo-server:9100"]
    assert jobs["hgo-worker"]["dns_sd_configs"][0]["names"] == ["hgo-workers"]


def test_compose_scrape_targets_match_the_services() -> None:
    config = yaml.safe_load(PROM_CONFIG.read_text())
    services = load_compose({})["services"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (target,) = jobs["hgo-server"]["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert f"--metrics-port={port}" in services[host]["command"]
    sd = jobs["hgo-worker"]["dns_sd_configs"][0]
    workers = sorted(n for n in services if n.startswith("worker-"))
    assert sorted(sd["names"]) == workers
    for name in workers:
        assert f"--metrics-port={sd['port']}" in services[name]["command"]


def test_dashboard_is_provisioned_and_covers_every_metric() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ds = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    (uid,) = [d["uid"] for d in ds if d["type"] == "prometheus"]
    provider = yaml.safe_load(DASH_PROVIDER.read_text())["providers"][0]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"

    assert uid == "hgo-prometheus"  # provisioned for Compose; the dashboard does not depend on it
    # importable anywhere: the datasource is an import input and a datasource variable
    (inp,) = dash["__inputs"]
    assert (inp["name"], inp["type"], inp["pluginId"]) == ("DS_PROMETHEUS", "datasource", "prometheus")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    run = variables["run"]
    assert run["type"] == "query" and run["includeAll"] and run["multi"]
    assert "hgo_run_info" in run["query"]["query"] and run["datasource"]["uid"] == "${DS_PROMETHEUS}"
    assert "hgo-prometheus" not in DASHBOARD.read_text()

    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    used: set[str] = set()
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            names = _metric_names(target["expr"])
            used |= names
            # server series follow the run selector (worker series carry no server label)
            for name in names - WORKER_METRICS:
                assert re.search(rf"\b{name}(_bucket|_sum|_count)?\{{instance=~\"\$run\"", target["expr"]), (
                    panel["title"],
                    target["expr"],
                )
            # rates in base units: per second, never "per interval"
            assert "increase(" not in target["expr"], target["expr"]
    unknown = used - SERVER_METRICS - WORKER_METRICS
    assert not unknown, f"dashboard uses metrics outside docs/protocol.md: {unknown}"
    missing = (SERVER_METRICS | WORKER_METRICS) - used
    assert not missing, f"no panel shows {missing}"
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Test accuracy",
        "Test loss",
        "Round duration vs tau",
        "Block size b_v",
        "Prefix length by profile",
        "Rejected messages by reason",
        "Bytes in / out",
        "Worker CPU",
        "Worker memory",
        "Run settings",
    ):
        assert wanted in titles  # fmt: skip


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _live_config(topo: Any) -> dict[str, Any]:
    """deploy/prometheus.yml with each Compose name replaced by the live instances' addresses."""
    config = yaml.safe_load(PROM_CONFIG.read_text())
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    for job in config["scrape_configs"]:
        statics = []
        for sc in job.get("static_configs", []):
            targets = []
            for t in sc["targets"]:
                host, port = t.split(":")
                targets += [f"{i.address}:{i.port(int(port))}" for i in topo.of(host)]
            statics.append({"targets": targets})
        for sd in job.pop("dns_sd_configs", []):
            for name in sd["names"]:
                insts = topo.of(name)
                if insts:  # what DNS would answer: one A record per running replica
                    targets = [f"{i.address}:{i.port(int(sd['port']))}" for i in insts]
                    statics.append({"targets": targets, "labels": {"service": name}})
        # the DNS relabelling has nothing to act on once targets are static
        job.pop("relabel_configs", None)
        job["static_configs"] = statics
    return config


def _round_quantiles_agree_with_the_round_log(base: str, log_path: Path) -> None:
    """The dashboard's round-duration quantiles against the same rounds' durations in the log.

    The panel's own expressions are evaluated at the last scrape of ``hgo_rounds_total``
    with ``$__rate_interval`` widened to every scrape so far; the rounds they cover are
    those the counter counted between its first and last sample. Each quantile must fall
    in the bucket of the log's exact quantile or a neighbouring one.
    """
    import bisect

    import numpy as np

    from hgo_common import roundlog

    def scraped() -> tuple[float, int, float, int] | None:
        (series,) = _query(base, "hgo_rounds_total[10m]")
        (t0, first), (t1, last) = series["values"][0], series["values"][-1]
        span = (float(t0), int(float(first)), float(t1), int(float(last)))
        return span if span[3] - span[1] >= 60 else None

    t0, r0, t1, r1 = wait_for(scraped, 120, 1.0, "60 rounds between the first and the last scrape")
    window = f"{int((t1 - t0) * 1000) + 500}ms"
    records = roundlog.read(log_path)[r0:r1]
    # the histogram observes the whole round: set-up (prepare_ms) plus broadcast to update (round_ms)
    seconds = np.array([(r["round_ms"] + r["prepare_ms"]) / 1000.0 for r in records])
    buckets = sorted(float(b["metric"]["le"]) for b in _query(base, "hgo_round_duration_seconds_bucket"))
    panels = json.loads(DASHBOARD.read_text())["panels"]
    (panel,) = [p for p in panels if p["title"] == "Round duration vs tau"]
    quantile_exprs = [t["expr"] for t in panel["targets"] if t["expr"].startswith("histogram_quantile")]
    figures = []
    for expr in quantile_exprs:
        q = float(re.match(r"histogram_quantile\(([0-9.]+),", expr).group(1))  # type: ignore[union-attr]
        url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": render(expr, window), "time": t1})
        with urllib.request.urlopen(url, timeout=10) as resp:
            (row,) = json.load(resp)["data"]["result"]
        prom = float(row["value"][1])
        exact = float(np.quantile(seconds, q, method="inverted_cdf"))
        i_prom, i_log = bisect.bisect_left(buckets, prom), bisect.bisect_left(buckets, exact)
        figures.append(f"p{q * 100:g}: dashboard {prom * 1000:.1f} ms, round log {exact * 1000:.1f} ms")
        assert abs(i_prom - i_log) <= 1, (
            f"p{q * 100:g}: Prometheus {prom:.4f} s (bucket {i_prom}) vs round log {exact:.4f} s "
            f"(bucket {i_log}); buckets {buckets}"
        )
    print(f"round duration over {len(seconds)} rounds at tau = 100 ms: " + "; ".join(figures))


def test_dashboard_queries_return_data_from_live_prometheus(procs: ProcessGroup, tmp_path: Path) -> None:
    prometheus = _prometheus()
    token = "prometheus-test-token"
    env = {"HGO_N": "3", "HGO_Q": "3", "HGO_WEAK": "1", "HGO_AVERAGE": "1", "HGO_POWERFUL": "1",
           "HGO_ROUNDS": "100000", "HGO_EVAL_EVERY": "5", "HGO_TAU": "100ms", "HGO_TOKEN": token}  # fmt: skip
    topo = make_topology(procs, tmp_path, env)
    try:
        (server,) = topo.start("server")
        port = server.port(50051)
        wait_for(lambda: status(server.address, port, token), 60, 0.5, "the server to answer Status")
        for name in ("worker-weak", "worker-average", "worker-powerful"):
            topo.start(name)
        # one unauthenticated call: hgo_rejected_messages_total{reason=...} must show it
        assert status(server.address, port, None) is None

        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(_live_config(topo)))
        check = subprocess.run([_promtool(), "check", "config", str(config)], capture_output=True, text=True,
                               check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        web = free_port()
        base = f"http://127.0.0.1:{web}"
        procs.start(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}", "--log.level=warn"],
            name="prometheus",
        )  # fmt: skip

        def all_up() -> bool:
            try:
                targets = _query(base, "up")
            except OSError:
                return False
            return len(targets) == 4 and all(t["value"][1] == "1" for t in targets)

        wait_for(all_up, 60, 1.0, "Prometheus to scrape the server and the 3 workers")
        exprs = dashboard_exprs()
        assert len(exprs) >= 20
        pending = {expr: title for title, expr in exprs}
        results: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 90
        while pending and time.monotonic() < deadline:
            for expr in list(pending):
                res = _query(base, render(expr))
                if res:
                    results[expr] = res
                    del pending[expr]
            if pending:
                time.sleep(1.0)
        assert not pending, f"dashboard queries with no data: {sorted(pending.items())}"

        # the values are the live cluster's
        def one(expr: str) -> float:
            (row,) = _query(base, expr)
            return float(row["value"][1])

        assert one("hgo_tau_seconds") == pytest.approx(0.1)
        assert one("hgo_sampled_workers") == 3
        assert one("sum(hgo_active_sessions)") == 3
        assert one("hgo_round") > 5
        assert 0.0 <= one("hgo_test_accuracy") <= 1.0
        rates = _query(base, "hgo_worker_rate_per_second")
        assert {r["metric"]["profile"] for r in rates} == {"weak", "average", "powerful"}
        assert {r["metric"]["service"] for r in rates} == {"worker-weak", "worker-average", "worker-powerful"}
        weak = next(float(r["value"][1]) for r in rates if r["metric"]["profile"] == "weak")
        powerful = next(float(r["value"][1]) for r in rates if r["metric"]["profile"] == "powerful")
        assert weak < powerful  # the profiles' rate distributions are far apart (profiles.PROFILES)
        reasons = {r["metric"]["reason"] for r in _query(base, "hgo_rejected_messages_total")}
        assert "unauthenticated" in reasons
        (info,) = _query(base, "hgo_run_info")
        assert {k: info["metric"][k] for k in ("rule", "f", "q", "tau", "dataset", "algorithm", "model")} == {
            "rule": "average", "f": "0", "q": "3", "tau": "100ms", "dataset": "digits", "algorithm": "hgo",
            "model": "mlp",
        }  # fmt: skip
        assert {r["metric"]["job"] for r in _query(base, "process_resident_memory_bytes")} >= {"hgo-worker"}
        _round_quantiles_agree_with_the_round_log(base, topo.volume_dir("hgo-data") / "rounds.jsonl")
    finally:
        topo.close()


def test_round_buckets_follow_tau() -> None:
    from hgo_server.config import from_mapping
    from hgo_server.metrics import ServerMetrics, round_buckets, run_labels

    b = round_buckets(100.0)
    assert list(b) == sorted(set(b)) and 0.1 in b and 0.101 in b and 0.102 in b and b[-1] == 1.0
    # just above tau the edges are 1 % of tau apart: a 102 ms round is no longer read as 175 ms
    assert [e for e in b if 0.1 <= e <= 0.105] == [0.1, 0.101, 0.102, 0.103, 0.105]
    assert round_buckets(float("inf")) == round_buckets(None)  # sgd with tau = inf: decades
    auto = from_mapping({"tau": "auto", "tau_min": 20, "tau_max": 400})
    m = ServerMetrics.for_config(auto)
    edges = m.round_buckets
    assert edges[0] <= 0.010 and edges[-1] == 0.5 and len(edges) <= 51  # tau_min/2 .. 1.25 tau_max
    ratios = [hi / lo for lo, hi in itertools.pairwise(edges) if lo >= 0.01]
    assert max(ratios) <= 1.13
    assert run_labels(auto, "mlp")["tau"] == "auto:20ms-400ms"
    assert run_labels(from_mapping({"tau": "inf", "algorithm": "sgd"}), "mlp")["tau"] == "inf"
