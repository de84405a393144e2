"""docker-compose.yml: valid against the Compose Specification, and run for real as processes.

No container engine here, so the topology test starts the server and the workers with
exactly the argv (image ENTRYPOINT + service command) and environment the compose file
gives them, each replica in its own network namespace when the machine allows it
(tests/compose_run.py), and checks that training progresses.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest

from hgo_common import profiles, roundlog
from tests.compose_run import (
    COMPOSE_FILE,
    DOCKERFILE,
    ComposeTopology,
    dockerfile_stages,
    load_compose,
    make_topology,
    service_argv,
    status,
    wait_for,
)
from tests.procs import ROOT, ProcessGroup

SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
ENV_EXAMPLE = ROOT / ".env.example"
WORKER_SERVICES = ("worker-weak", "worker-average", "worker-powerful")


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    # The file declares draft 2019-09 (as "http://json-schema.org/draft/2019-09/schema#", a
    # spelling jsonschema does not map), so name the validator class explicitly.
    assert "2019-09" in schema["$schema"]
    cls = jsonschema.Draft201909Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _env_example() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def test_compose_file_matches_the_compose_specification() -> None:
    validator = _validator()
    for env in ({}, _env_example(), {"HGO_WEAK": "30", "HGO_AVERAGE": "40", "HGO_POWERFUL": "30"}):
        doc = load_compose(env)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
        assert errors == [], errors

    # the schema really checks: a non-integer replica count and an unknown key are caught
    bad = load_compose({"HGO_WEAK": "three"})
    assert any("replicas" in list(e.absolute_path) for e in validator.iter_errors(bad))
    bad = load_compose({})
    bad["services"]["server"]["comand"] = ["typo"]
    assert not validator.is_valid(bad)


def test_replicas_follow_the_profile_variables() -> None:
    doc = load_compose({})
    names = (*WORKER_SERVICES, "worker-byzantine")
    replicas = {name: doc["services"][name]["deploy"]["replicas"] for name in names}
    assert replicas == {"worker-weak": 3, "worker-average": 4, "worker-powerful": 3, "worker-byzantine": 0}
    # the defaults are the paper's default mix of the default N
    command = doc["services"]["server"]["command"]
    n = int(next(a for a in command if a.startswith("--min-workers=")).split("=")[1])
    assert [replicas[s] for s in WORKER_SERVICES] == [round(f * n) for f in profiles.MIXES["default"]]

    doc = load_compose({"HGO_WEAK": "15", "HGO_AVERAGE": "20", "HGO_POWERFUL": "15", "HGO_BYZANTINE": "2"})
    assert [doc["services"][s]["deploy"]["replicas"] for s in (*WORKER_SERVICES, "worker-byzantine")] == [
        15,
        20,
        15,
        2,
    ]


def test_env_example_matches_compose_defaults() -> None:
    """Every variable of .env.example is used by docker-compose.yml with the same default."""
    text = "\n".join(ln for ln in COMPOSE_FILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    defaults = dict(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", text))
    example = _env_example()
    assert set(example) == set(defaults), set(example) ^ set(defaults)
    for key, value in example.items():
        assert defaults[key] == value, (key, defaults[key], value)


def test_compose_commands_are_accepted_by_the_real_clis() -> None:
    from hgo_server.config import parse_args
    from hgo_worker.cli import build_parser, config_from_args

    doc = load_compose(_env_example())
    stages = dockerfile_stages()
    argv = service_argv(doc["services"]["server"], stages)
    assert argv[0] == "hgo-server"
    cfg = parse_args(argv[1:])
    assert (cfg.bind, cfg.port, cfg.metrics_port, cfg.min_workers, cfg.q) == ("0.0.0.0", 50051, 9100, 10, 8)
    assert cfg.dataset == "digits"  # bundled with scikit-learn: works in the image with no data volume
    assert cfg.log is not None and cfg.log.startswith("/data/")
    # the image's default CMD parses too
    parse_args(stages["server"]["CMD"])

    for name in (*WORKER_SERVICES, "worker-byzantine"):
        argv = service_argv(doc["services"][name], stages)
        assert argv[0] == "hgo-worker"
        args = build_parser().parse_args(argv[1:])
        config_from_args(args)
        assert args.server == "server:50051"
        assert args.metrics_port == 9101
    byzantine = service_argv(doc["services"]["worker-byzantine"], stages)
    assert build_parser().parse_args(byzantine[1:]).attack == "alie"
    build_parser().parse_args(stages["worker"]["CMD"])


def test_compose_mounts_and_ports() -> None:
    doc = load_compose({})
    for name in ("prometheus", "grafana"):
        for spec in doc["services"][name]["volumes"]:
            src = spec.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), spec
    home = doc["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()
    # published ports stay on loopback unless asked otherwise
    for name in ("server", "prometheus", "grafana"):
        for port in doc["services"][name]["ports"]:
            assert port.startswith("127.0.0.1:"), port
    published = load_compose({"HGO_PUBLISH_ADDR": "0.0.0.0"})["services"]["server"]["ports"]
    assert published == ["0.0.0.0:50051:50051"]
    # every build target exists in the Dockerfile
    stages = dockerfile_stages()
    for name, svc in doc["services"].items():
        if "build" in svc:
            assert svc["build"]["target"] in stages, name
            assert (ROOT / svc["build"]["dockerfile"]).is_file()


TOPOLOGY_ENV = {
    "HGO_N": "3",
    "HGO_Q": "3",
    "HGO_WEAK": "1",
    "HGO_AVERAGE": "1",
    "HGO_POWERFUL": "1",
    "HGO_ROUNDS": "100",
    "HGO_EVAL_EVERY": "10",
    "HGO_TAU": "100ms",
    "HGO_TOKEN": "compose-topology-test-token",
}


def _healthcheck(service: str) -> list[str]:
    """The service's healthcheck command (``test: [CMD, ...]`` in docker-compose.yml)."""
    test = load_compose({})["services"][service]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return [str(a) for a in test[1:]]


def test_one_image_for_every_hgo_service() -> None:
    """The server service builds the image (target hgo); every worker service runs that image."""
    doc = load_compose({"HGO_IMAGE_TAG": "x1"})
    stages = dockerfile_stages()
    hgo = {n: s for n, s in doc["services"].items() if n == "server" or n.startswith("worker-")}
    assert [n for n, s in doc["services"].items() if "build" in s] == ["server"]
    assert doc["services"]["server"]["build"]["target"] == "hgo"
    assert "ENTRYPOINT" not in stages["hgo"] and stages["hgo"]["base"] == "runtime"
    assert {s["image"] for s in hgo.values()} == {"hgo:x1"}
    for name, svc in hgo.items():
        assert svc["entrypoint"] == (["hgo-server"] if name == "server" else ["hgo-worker"]), name
        check = _healthcheck(name)
        assert check[:3] == ["python", "-m", "hgo_server.health"], name
        # the same probe as the Kubernetes image's HEALTHCHECK
        k8s = stages["server" if name == "server" else "worker"]["HEALTHCHECK"]
        assert check == k8s, (name, check, k8s)
    # build arguments: the base pinned as in the Dockerfile; an empty PIP_* means PyPI
    pin = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert pin is not None
    args = doc["services"]["server"]["build"]["args"]
    assert args == {"PYTHON_IMAGE": pin.group(1), "PIP_INDEX_URL": "", "PIP_EXTRA_INDEX_URL": "",
                    "PIP_TRUSTED_HOST": ""}  # fmt: skip
    args = load_compose({"PYTHON_IMAGE": "base:x", "PIP_INDEX_URL": "https://i/simple"})["services"]["server"]
    assert args["build"]["args"]["PYTHON_IMAGE"] == "base:x"
    assert args["build"]["args"]["PIP_INDEX_URL"] == "https://i/simple"
    image = load_compose({"PROMETHEUS_IMAGE": "hgo-prometheus:x"})["services"]["prometheus"]["image"]
    assert image == "hgo-prometheus:x"


def _round_log(tmp_path: Path) -> Path:
    """Where the server's --log=/data/rounds.jsonl lands (the hgo-data volume's directory)."""
    return tmp_path / "volumes" / "hgo-data" / "rounds.jsonl"


def _expect_training_done(procs: ProcessGroup, topo: ComposeTopology) -> None:
    """The server finishes its rounds and exits 0; every worker is told so and exits 0."""
    (server,) = topo.of("server")
    assert procs.wait(server.proc, 120) == 0, procs.log(server.proc)[-3000:]
    for inst in topo.instances:
        if inst is not server:
            assert procs.wait(inst.proc, 30) == 0, procs.log(inst.proc)[-3000:]


def test_compose_topology_trains(procs: ProcessGroup, tmp_path: Path) -> None:
    topo = make_topology(procs, tmp_path, TOPOLOGY_ENV)
    try:
        (server,) = topo.start("server")
        port = server.port(50051)
        token = TOPOLOGY_ENV["HGO_TOKEN"]

        # the service's healthcheck, run the way Docker runs it (inside the container's network)
        health = [sys.executable, *_healthcheck("server")[1:]]
        if not topo.netns:
            health[-1] = f"127.0.0.1:{port}"

        def healthy() -> bool:
            return topo.run_in(server, health).returncode == 0

        wait_for(healthy, 60, 1.0, "the server's HEALTHCHECK to pass")
        first = status(server.address, port, token)
        assert first is not None and first.state == "waiting"

        for name in WORKER_SERVICES:
            topo.start(name)
        assert [len(topo.of(n)) for n in WORKER_SERVICES] == [1, 1, 1]

        rounds_seen = []

        def progressed() -> bool:
            reply = status(server.address, port, token)
            if reply is not None:
                rounds_seen.append(reply.round)
            return reply is not None and reply.round >= 20

        wait_for(progressed, 90, 0.5, "20 rounds")
        assert rounds_seen == sorted(rounds_seen)  # the round counter only grows

        if topo.netns:  # the worker service's healthcheck, in a worker's own namespace
            worker = topo.of("worker-powerful")[0]
            check = [sys.executable, *_healthcheck("worker-powerful")[1:]]
            res = topo.run_in(worker, check)
            assert res.returncode == 0, res.stdout + res.stderr

        _expect_training_done(procs, topo)
    finally:
        topo.close()

    records = roundlog.read(_round_log(tmp_path))
    assert [r["round"] for r in records] == list(range(100))
    sampled_profiles = {w["profile"] for r in records for w in r["workers"]}
    assert sampled_profiles == {"weak", "average", "powerful"}
    acc = [r["accuracy"] for r in records if r.get("accuracy") is not None]
    assert len(acc) >= 5
    # digits has 10 classes: chance is 0.1. Measured here: 0.24 after 10 rounds, 0.86 after 100.
    assert acc[-1] > acc[0] + 0.2, acc
    assert acc[-1] > 0.5, acc
    assert (tmp_path / "volumes" / "hgo-data" / "checkpoints").is_dir()


def test_compose_topology_cleans_up(procs: ProcessGroup, tmp_path: Path) -> None:
    """Namespaces and links are gone after close, even when a process is still running."""
    import subprocess

    topo = make_topology(procs, tmp_path, TOPOLOGY_ENV)
    if not topo.netns:
        topo.close()
        pytest.skip("network namespaces unavailable here (needs root and ip netns); loopback mode used")
    (server,) = topo.start("server")
    ns = server.netns
    assert ns is not None
    assert ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    topo.close()
    assert server.proc.poll() is not None
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert ns not in after
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert topo.bridge not in links


def test_compose_topology_with_a_byzantine_worker(procs: ProcessGroup, tmp_path: Path) -> None:
    """The documented recipe: HGO_BYZANTINE=1, a robust rule with HGO_F=1, HGO_N counting it."""
    env = {**TOPOLOGY_ENV, "HGO_N": "4", "HGO_Q": "4", "HGO_BYZANTINE": "1", "HGO_ATTACK": "sign-flip",
           "HGO_RULE": "median", "HGO_F": "1", "HGO_ROUNDS": "60"}  # fmt: skip
    topo = make_topology(procs, tmp_path, env)
    try:
        (server,) = topo.start("server")
        port = server.port(50051)
        wait_for(lambda: status(server.address, port, env["HGO_TOKEN"]), 60, 0.5, "the server to answer")
        for name in (*WORKER_SERVICES, "worker-byzantine"):
            topo.start(name)
        assert len(topo.of("worker-byzantine")) == 1
        _expect_training_done(procs, topo)
    finally:
        topo.close()
    records = roundlog.read(_round_log(tmp_path))
    assert len(records) == 60
    byz = {w["id"] for r in records for w in r["workers"] if w["byzantine"]}
    assert len(byz) == 1  # the worker-byzantine replica took part, declared as such
    acc = [r["accuracy"] for r in records if r.get("accuracy") is not None]
    # the median keeps learning despite the sign-flipper (measured: 0.16 after 10 rounds, 0.46 after 60)
    assert acc[-1] > acc[0] + 0.1, acc
    assert acc[-1] > 0.25, acc
