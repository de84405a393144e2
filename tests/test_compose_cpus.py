"""docker-compose.yml's per-profile CPU limits (issue 21.3): ``cpus:`` from HGO_<PROFILE>_CPUS
(0 = no limit, the default) and the workers' ``--throttle`` from HGO_THROTTLE.

Checked the way tests/test_compose_topology.py checks the file (interpolated, parsed, valid
against the Compose Specification, commands accepted by the real CLI), and with the real
``docker-compose config`` when it is installed (it needs no Docker daemon).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.compose_run import COMPOSE_FILE, dockerfile_stages, load_compose, service_argv
from tests.procs import ROOT
from tests.test_compose_topology import _validator

LIMITS = {"HGO_WEAK_CPUS": "0.1", "HGO_AVERAGE_CPUS": "0.5", "HGO_POWERFUL_CPUS": "2",
          "HGO_BYZANTINE_CPUS": "0.25", "HGO_THROTTLE": "off"}  # fmt: skip
SERVICES = {"worker-weak": 0.1, "worker-average": 0.5, "worker-powerful": 2.0, "worker-byzantine": 0.25}


def test_cpus_default_to_no_limit_and_follow_the_variables() -> None:
    doc = load_compose({})
    assert {name: doc["services"][name]["cpus"] for name in SERVICES} == dict.fromkeys(SERVICES, 0)
    assert "cpus" not in doc["services"]["server"]  # the server is never limited by these
    doc = load_compose(LIMITS)
    assert {name: float(doc["services"][name]["cpus"]) for name in SERVICES} == SERVICES
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in _validator().iter_errors(doc)]
    assert errors == [], errors
    # a value that is not a number is caught by the schema (cpus: number or string is
    # allowed by the spec, so check what the interpolation gives for a typo'd list)
    bad = load_compose({"HGO_WEAK_CPUS": "[0.1]"})
    assert not _validator().is_valid(bad)


def test_throttle_variable_reaches_the_worker_cli() -> None:
    from hgo_worker.cli import build_parser, config_from_args

    stages = dockerfile_stages()
    for env, want in (({}, "on"), (LIMITS, "off")):
        doc = load_compose(env)
        for name in SERVICES:
            argv = service_argv(doc["services"][name], stages)
            args = build_parser().parse_args(argv[1:])
            config_from_args(args)  # --throttle off with a profile and no --rate is accepted
            assert args.throttle == want, (name, env)


def _compose_config(env: dict[str, str]) -> dict[str, object]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose); checked above without it")
    full = {k: v for k, v in os.environ.items() if not k.startswith("HGO_")}
    res = subprocess.run(
        [exe, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config"],
        capture_output=True, text=True, env={**full, **env}, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(res.stdout)
    assert isinstance(doc, dict)
    return doc


def test_docker_compose_config_accepts_the_limits() -> None:
    if (ROOT / ".env").exists():
        pytest.skip(".env in the checkout would override the variables under test")
    plain = _compose_config({})
    services = plain["services"]
    assert isinstance(services, dict)
    assert {name: float(services[name]["cpus"]) for name in SERVICES} == dict.fromkeys(SERVICES, 0.0)
    limited = _compose_config(LIMITS)["services"]
    assert isinstance(limited, dict)
    assert {name: float(limited[name]["cpus"]) for name in SERVICES} == SERVICES
    assert "--throttle=off" in limited["worker-weak"]["command"]
