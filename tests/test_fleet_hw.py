"""The fleet-hw scenario (issue 21.4): fig4-hw's hardware-correlated split on really
constrained devices, through ``hgo-experiment``'s net mode.

The end-to-end test runs a tiny version of the shipped scenario (its ``[quick]`` setting:
6 devices on digits, the 2 weak ones under a 10 % CPU quota with a 1 Mbit/s uplink, the 2
average ones under 50 %) with real ``hgo-server`` and ``hgo-worker`` processes and checks
what the run did and that nothing of the lab is left (cgroups, namespaces, veths, qdiscs,
processes). It needs root, the cgroup ``cpu`` controller and ``ip netns``/``tc``; skipped
with the reason otherwise. The other tests check the settings without starting anything.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hgo_lab import constraints
from hgo_lab.cluster import ClusterConfig
from hgo_lab.cluster.config import pins_shards, worker_argv, worker_session, write_shard_tokens
from hgo_lab.constraints import ConstraintError, DeviceLimits
from hgo_lab.experiment.runner import _slug, run_scenario
from hgo_lab.experiment.scenario import SCENARIOS, ScenarioError, load_scenario
from tests.test_constraints import _mine

SCENARIO = SCENARIOS / "fleet-hw.toml"


def test_the_shipped_scenario_declares_real_constraints_per_profile() -> None:
    sc = load_scenario(SCENARIO)
    assert len(sc.variants) >= 6 and sc.net["only"] is True and sc.net["throttle"] == "off"
    assert sc.net["limits"]["weak"] == {"cpu_share": 0.1, "uplink": "1mbit", "downlink": "10mbit"}
    assert "powerful" not in sc.net["limits"]  # powerful devices are unconstrained
    base = sc.variants[0].config
    assert base.n >= 30 and base.partition == "hardware:9:3" and base.budget_policy == "fixed"
    cf = [v for v in sc.variants if "coordinates-first" in v.label]
    assert {v.config.algorithm for v in cf} == {"hgo", "sgd"} and len(cf) == 3
    assert all(v.net["batch_by_profile"] == {"weak": 1} for v in cf)


def test_sim_mode_refuses_a_net_only_scenario(tmp_path: Path) -> None:
    sc = load_scenario(SCENARIO, quick=True, rounds=2)
    with pytest.raises(ValueError, match=r"only over the wire.*--mode net"):
        run_scenario(sc, tmp_path, mode="sim", echo=lambda m: None)


def test_a_bad_variant_net_key_names_the_variant_and_the_key(tmp_path: Path) -> None:
    text = SCENARIO.read_text().replace("net = { batch_by_profile", "net = { batch_per_profile", 1)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('data_dir = "../shared/data/mnist"', 'data_dir = "/nonexistent"'))
    with pytest.raises(
        ScenarioError, match=r"variant 'HGO coordinates-first' net: unknown key 'batch_per_profile'"
    ):
        load_scenario(bad)


def test_throttle_off_batch_per_profile_and_pinned_shards_reach_the_workers(tmp_path: Path) -> None:
    cfg = ClusterConfig.make(n=6, mix="default", partition="hardware:2:3", dataset="digits",
                             throttle="off", batch_by_profile={"weak": 1}, out=tmp_path)  # fmt: skip
    cfg.validate()
    profs = cfg.worker_profiles()
    assert profs[:2] == ["weak", "weak"] and pins_shards(cfg)
    weak = worker_argv(cfg, 0, 5555, "weak", token_file=tmp_path / "w0.token")
    assert "--rate" not in weak and weak[weak.index("--throttle") + 1] == "off"
    assert weak[len(weak) - 1 - weak[::-1].index("--batch-size") + 1] == "1"  # the last --batch-size wins
    assert weak[weak.index("--token-file") + 1] == str(tmp_path / "w0.token")
    powerful = worker_argv(cfg, 5, 5555, "powerful")
    assert "--rate" not in powerful and powerful.count("--batch-size") == 1
    assert worker_session(cfg, 0, "weak")["batch_size"] == 1 and "rate" not in worker_session(cfg, 0, "weak")
    server_file, files = write_shard_tokens(cfg, tmp_path)
    lines = server_file.read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == [f"w{i}" for i in range(6)]
    assert [ln.split()[2] for ln in lines] == [f"shard={i}" for i in range(6)]
    assert [f.read_text().strip() for f in files] == [ln.split()[1] for ln in lines]
    assert oct(server_file.stat().st_mode & 0o777) == "0o600"
    # with the emulated throttle on, the profile's drawn rate is still passed
    on = ClusterConfig.make(n=6, dataset="digits", out=tmp_path)
    assert "--rate" in worker_argv(on, 0, 5555, "weak") and not pins_shards(on)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"throttle": "of"}, r"throttle must be 'on' or 'off', got 'of'"),
        (
            {"throttle": "off", "budget_policy": "coordinates-first"},
            r"needs budget policy 'fixed'.*coordinates-first",
        ),
        ({"batch_by_profile": {"slow": 1}}, r"unknown profile 'slow'"),
        ({"batch_by_profile": {"weak": 0}}, r"profile 'weak' must be an integer >= 1, got 0"),
        ({"partition": "hardware:2:3", "per_process": 3}, r"--sessions-per-process 3 with shards pinned"),
    ],
)
def test_cluster_settings_are_checked(kw: dict[str, object], match: str, tmp_path: Path) -> None:
    cfg = ClusterConfig.make(n=6, dataset="digits", out=tmp_path, **kw)
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def _why_not() -> str | None:
    try:
        constraints.check_support(DeviceLimits.parse(cpu_share=0.1, uplink="1mbit", downlink="10mbit"))
    except ConstraintError as exc:
        return str(exc)
    return None


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(900)
def test_a_tiny_fleet_hw_runs_with_real_constraints_and_cleans_up(tmp_path: Path) -> None:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    sc = load_scenario(SCENARIO, quick=True, rounds=6)
    keep = ("HGO fixed s=32", "SGD (tau=inf) coordinates-first")
    sc.variants = [v for v in sc.variants if v.label in keep]
    assert [v.config.n for v in sc.variants] == [6, 6]
    res = run_scenario(sc, tmp_path, mode="net", echo=lambda m: None)
    assert res["failed"] == []
    for label in keep:
        recs = res["runs"][label][0]
        assert len(recs) == 6
        work = tmp_path / "logs" / f"{_slug(label)}_seed0"  # the cluster's own directory
        server_log = (work / "server.log").read_text()
        # the weak devices (workers 0 and 1: hardware:2:3 puts digits 0-2 on them) joined by
        # identity and hold shards 0 and 1, whatever the order of joins
        for i in (0, 1):
            assert f"name='w{i}-weak' profile=weak rate=0" in server_log and f"shard={i} " in server_log
        declared = {w["declared"]["profile"]: w["declared"] for r in recs for w in r["workers"]}
        assert set(declared) == {"weak", "average", "powerful"}
        assert all(d["rate"] == 0.0 for d in declared.values())  # --throttle off everywhere
        want_s = 1 if "coordinates-first" in label else 32
        assert declared["weak"]["batch_size"] == want_s and declared["powerful"]["batch_size"] == 32
        # the weak devices ran inside the lab: the exec launcher in front of their command line
        pids = json.loads((work / "processes.json").read_text())
        assert set(pids) >= {"server", *(f"worker-{i}" for i in range(6))}
        for pid in pids.values():
            assert (
                not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
            )
    # per-class accuracy from the exported model (the scenario's per_class = true)
    seeds = res["details"]["variants"]["HGO fixed s=32"]["seeds"]
    assert set(seeds[0]["per_class"]) == {str(c) for c in range(10)}
    # nothing of the labs is left: cgroups, namespaces, veths, state files, qdiscs
    assert _mine(os.getpid()).empty(), _mine(os.getpid()).as_dict()
    tc = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    assert f"{constraints.LINK_PREFIX}{os.getpid():07x}" not in tc
