"""docker-compose.yml and deploy/Dockerfile with a real Docker engine.

The images are built and the Compose cluster runs in real containers: a training run with
a Byzantine container and a robust rule, a server crash (restart + --resume), a killed
worker, Prometheus scraping every container, and nothing left afterwards. Skipped, with
the reason, where no Docker daemon answers (.ci/run starts one).

Without Docker Hub (this machine, CI) the base images come from Debian packages through
deploy/local-base-image.sh, tagged for this test run only; its debootstrap result is kept
in .cache/docker/ inside the clone. Set HGO_TEST_PYTHON_IMAGE (and HGO_TEST_PROMETHEUS_IMAGE)
to use existing images instead (they are then left alone). Every image, container, network
and volume the tests create carries this run's id and is removed at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.compose_run import status, wait_for
from tests.procs import ROOT, free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

RUN_ID = f"t{os.getpid()}{secrets.token_hex(3)}"  # in every name this module creates
ROOTFS_CACHE = ROOT / ".cache" / "docker" / "rootfs-bookworm.tar"
TOKEN = "docker-test-token"
# the compose test's cluster: the paper's mix of 4 honest workers (round(0.3*4)=1 weak,
# round(0.4*4)=2 average, 1 powerful) plus one Byzantine container, median with f=1
HONEST = {"worker-weak": 1, "worker-average": 2, "worker-powerful": 1}
ROUNDS = 1000


def _run(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=dict(env) if env else None,
        timeout=timeout,
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


def _engine() -> tuple[list[str], str]:
    """(compose argv prefix, "") when a Docker daemon and a Compose answer, else ([], why not)."""
    if shutil.which("docker") is None:
        return [], "no docker CLI (apt-get install docker.io docker-compose; .ci/run does)"
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if info.returncode != 0:
        return [], f"no Docker daemon answers ({info.stderr.strip()[:200]}); start dockerd (.ci/run does)"
    for compose in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(compose[0]) is None:
            continue
        res = subprocess.run([*compose, "version"], capture_output=True, text=True, timeout=60, check=False)
        if res.returncode == 0:
            return compose, ""
    return (
        [],
        "no Docker Compose (neither `docker compose` nor docker-compose; apt-get install docker-compose)",
    )


def _pip_index_env() -> dict[str, str]:
    """This machine's pip index settings that a build container can use (http(s) URLs only)."""
    env: dict[str, str] = {}
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    res = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in res.stdout.splitlines():
        name, _, value = line.partition("=")
        option = name.rsplit(".", 1)[-1]
        values = [v for v in value.strip().strip("'\"").split() if v.startswith(("http://", "https://"))]
        key = {"index-url": "PIP_INDEX_URL", "extra-index-url": "PIP_EXTRA_INDEX_URL"}.get(option)
        if key and values and key not in env:
            env[key] = " ".join(values)
        if option == "trusted-host" and value.strip() and "PIP_TRUSTED_HOST" not in env:
            env["PIP_TRUSTED_HOST"] = value.strip().strip("'\"")
    return env


@dataclass
class Images:
    compose: list[str]
    python: str  # base image (PYTHON_IMAGE)
    prometheus: str  # PROMETHEUS_IMAGE
    hgo: str  # the compose image, hgo:RUN_ID
    build_seconds: float = 0.0
    base_seconds: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # PYTHON_IMAGE, PIP_* for builds


def _image_ids(*args: str) -> set[str]:
    return set(_run(["docker", "image", "ls", "-q", "--no-trunc", *args]).stdout.split())


def _size_mb(image: str) -> float:
    return int(_run(["docker", "image", "inspect", "--format", "{{.Size}}", image]).stdout) / 1e6


@pytest.fixture(scope="module")
def images() -> Iterator[Images]:
    compose, why = _engine()
    if not compose:
        pytest.skip(why)
    dangling_before = _image_ids("--filter", "dangling=true")
    tagged: list[str] = []
    python = os.environ.get("HGO_TEST_PYTHON_IMAGE", "")
    prometheus = os.environ.get("HGO_TEST_PROMETHEUS_IMAGE", "")
    imgs = Images(compose, python, prometheus, f"hgo:{RUN_ID}")
    try:
        if not python:
            if os.geteuid() != 0 or shutil.which("debootstrap") is None:
                pytest.skip(
                    "no HGO_TEST_PYTHON_IMAGE and no root + debootstrap for deploy/local-base-image.sh"
                )
            imgs.python = f"hgo-test-python:{RUN_ID}"
            imgs.prometheus = prometheus or f"hgo-test-prometheus:{RUN_ID}"
            tagged.append(imgs.python)
            argv = [
                str(ROOT / "deploy" / "local-base-image.sh"),
                "--tag",
                imgs.python,
                "--rootfs-cache",
                str(ROOTFS_CACHE),
            ]
            if not prometheus:
                tagged.append(imgs.prometheus)
                argv += ["--prometheus", imgs.prometheus]
            t0 = time.monotonic()
            print(_run(argv, timeout=900).stdout)
            imgs.base_seconds = time.monotonic() - t0
        if not imgs.prometheus:
            imgs.prometheus = "prom/prometheus:v2.53.1"
        imgs.env = {"PYTHON_IMAGE": imgs.python, **_pip_index_env()}
        tagged.append(imgs.hgo)
        t0 = time.monotonic()
        with Compose(imgs, "build") as c:
            c.run("build", "--force-rm", "server", timeout=900)  # no container left by a failed step
        imgs.build_seconds = time.monotonic() - t0
        print(
            f"built {imgs.hgo}: {_size_mb(imgs.hgo):.0f} MB in {imgs.build_seconds:.0f} s "
            f"(base {imgs.python} {_size_mb(imgs.python):.0f} MB, {imgs.base_seconds:.0f} s)"
        )
        yield imgs
    finally:
        for image in tagged:
            subprocess.run(["docker", "image", "rm", "--force", image], capture_output=True, check=False)
        # the legacy builder leaves the build stage of a multi-stage build as an untagged image
        for image in _image_ids("--filter", "dangling=true") - dangling_before:
            subprocess.run(["docker", "image", "rm", "--force", image], capture_output=True, check=False)


class Compose:
    """One Compose project (unique name) over the repository's docker-compose.yml."""

    def __init__(self, imgs: Images, suffix: str, settings: Mapping[str, str] | None = None) -> None:
        self.imgs = imgs
        self.project = f"hgo{RUN_ID}{suffix}".lower()
        self.env_file = ROOT / ".cache" / "docker" / f"{self.project}.env"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HGO_", "PIP_", "COMPOSE_"))
            and k not in ("PYTHON_IMAGE", "PROMETHEUS_IMAGE")
        }
        env.update(imgs.env)
        env.update({"HGO_IMAGE_TAG": RUN_ID, "PROMETHEUS_IMAGE": imgs.prometheus, "DOCKER_BUILDKIT": "0"})
        env.update(settings or {})
        self.env = env

    def __enter__(self) -> Compose:
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("# empty: the test passes every setting in the environment\n")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=300, check=False)
        finally:
            self.env_file.unlink(missing_ok=True)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            *self.imgs.compose,
            "--project-name",
            self.project,
            "--project-directory",
            str(ROOT),
            "--file",
            str(ROOT / "docker-compose.yml"),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        return _run(argv, env=self.env, timeout=timeout, check=check)

    def containers(self, service: str | None = None, *, all_: bool = True) -> list[str]:
        argv = [
            "docker",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
        ]
        if service:
            argv += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            argv.append("-a")
        return _run(argv).stdout.split()

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, networks and volumes of this project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": self.containers(),
            "networks": _run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
            "volumes": _run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
        }


def _inspect(container: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = json.loads(_run(["docker", "inspect", container]).stdout)
    return out[0]


def _health(container: str) -> str:
    health = _inspect(container)["State"].get("Health")
    return str(health["Status"]) if health else "none"


def _image_config(image: str) -> dict[str, Any]:
    out: list[dict[str, Any]] = json.loads(_run(["docker", "image", "inspect", image]).stdout)
    return dict(out[0]["Config"])


def _in_image(image: str, code: str) -> str:
    return _run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code]
    ).stdout


def test_images_build_and_hold_only_the_runtime(images: Images) -> None:
    # the compose image: server and worker importable, no test or plotting dependencies
    mods = ["hgo_common", "hgo_server", "hgo_worker", "grpc", "numpy", "sklearn", "prometheus_client"]
    absent = ["matplotlib", "hgo_lab", "pytest", "hypothesis", "grpc_tools", "mypy", "ruff", "PIL", "pip"]
    code = (
        "import importlib.util as u, json, os, sys\n"
        f"mods = {mods + absent!r}\n"
        "print(json.dumps({'found': {m: u.find_spec(m) is not None for m in mods}, 'uid': os.getuid(),\n"
        "                  'python': sys.version.split()[0]}))\n"
        "import hgo_server.cli, hgo_worker.cli, hgo_server.health\n"
    )
    got = json.loads(_in_image(images.hgo, code))
    present = {m for m, found in got["found"].items() if found}
    assert set(mods) <= present
    assert present.isdisjoint(absent), present
    assert got["uid"] == 10001
    cfg = _image_config(images.hgo)
    assert not cfg.get("Entrypoint") and set(cfg["ExposedPorts"]) == {"50051/tcp", "9100/tcp", "9101/tcp"}
    # the bundled dataset loads and the CLIs answer inside the image (no network at all)
    for script in ("hgo-server", "hgo-worker"):
        res = _run(
            ["docker", "run", "--rm", "--network", "none", "--entrypoint", script, images.hgo, "--help"]
        )
        assert "usage:" in res.stdout

    # the Kubernetes targets: same layers plus their entrypoint and HEALTHCHECK
    for target, script in (("server", "hgo-server"), ("worker", "hgo-worker")):
        tag = f"hgo-test-{target}:{RUN_ID}"
        try:
            _run(
                [
                    "docker",
                    "build",
                    "--quiet",
                    "--force-rm",
                    "-f",
                    str(ROOT / "deploy" / "Dockerfile"),
                    "--target",
                    target,
                    "-t",
                    tag,
                    "--build-arg",
                    f"PYTHON_IMAGE={images.python}",
                    str(ROOT),
                ],
                env={**os.environ, "DOCKER_BUILDKIT": "0"},
            )
            cfg = _image_config(tag)
            assert cfg["Entrypoint"] == [script]
            assert cfg["Healthcheck"]["Test"][:4] == ["CMD", "python", "-m", "hgo_server.health"]
            assert cfg["User"] == "10001:10001"
        finally:
            subprocess.run(["docker", "image", "rm", "--force", tag], capture_output=True, check=False)

    sizes = {name: round(_size_mb(name)) for name in (images.hgo, images.python, images.prometheus)}
    print(
        f"image sizes (MB): {sizes}; hgo build {images.build_seconds:.0f} s, base {images.base_seconds:.0f} s"
    )
    assert sizes[images.hgo] < 600  # ~440 MB measured (docs/operations.md); matplotlib etc. would add ~100


def _prom_targets(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success"
    return list(body["data"]["activeTargets"])


def _logs(container: str) -> str:
    res = _run(["docker", "logs", container])
    return res.stdout + res.stderr


def test_compose_cluster_trains_survives_kills_and_leaves_nothing(images: Images) -> None:
    grpc_port, prom_port = free_port(), free_port()
    settings = {
        **{f"HGO_{s.split('-')[1].upper()}": str(n) for s, n in HONEST.items()},
        "HGO_BYZANTINE": "1",
        "HGO_ATTACK": "alie",
        "HGO_RULE": "median",
        "HGO_F": "1",
        "HGO_N": str(sum(HONEST.values()) + 1),
        "HGO_Q": "4",
        "HGO_ROUNDS": str(ROUNDS),
        "HGO_EVAL_EVERY": "50",
        "HGO_TOKEN": TOKEN,
        "HGO_PORT": str(grpc_port),
        "HGO_PROMETHEUS_PORT": str(prom_port),
    }
    services = ["server", *HONEST, "worker-byzantine", "prometheus"]  # all but Grafana (no image here)
    workers = [*HONEST, "worker-byzantine"]
    n_workers = sum(HONEST.values()) + 1
    c = Compose(images, "c", settings)
    t_up = time.monotonic()
    with c:
        c.run("up", "--detach", "--no-build", *services, timeout=300)
        (server,) = c.containers("server")
        (prom,) = c.containers("prometheus")
        wait_for(lambda: _health(server) == "healthy", 120, 1.0, "the server's healthcheck")

        def reply() -> Any:
            return status("127.0.0.1", grpc_port, TOKEN)

        def training_at(k: int) -> Any:
            r = reply()
            return r if r is not None and r.state == "training" and r.round >= k else None

        wait_for(lambda: training_at(30), 180, 0.5, "training to reach round 30")
        print(f"training after {time.monotonic() - t_up:.0f} s")

        # --- the server crashes (its process killed, not `docker kill`, which Docker counts as a
        # manual stop that restart policies leave alone): restart: on-failure, --resume
        wait_for(lambda: "checkpoint round=" in _logs(server), 60, 1.0, "a first checkpoint")
        before = reply().round
        os.kill(int(_inspect(server)["State"]["Pid"]), 9)
        wait_for(
            lambda: _inspect(server)["RestartCount"] >= 1 and _inspect(server)["State"]["Running"],
            60,
            0.5,
            "Docker to restart the server",
        )
        resumed = wait_for(
            lambda: [ln for ln in _logs(server).splitlines() if "resumed from round" in ln],
            60,
            1.0,
            "the server to resume",
        )
        resumed_at = int(resumed[-1].rsplit(" ", 1)[1])
        assert 0 < resumed_at <= before + 1, (resumed_at, before)
        # every worker reconnects by itself, and training continues past the crash
        r = wait_for(
            lambda: (x := training_at(before + 20)) is not None and x.active_sessions == n_workers and x,
            180,
            0.5,
            "the workers to reconnect and training to continue",
        )
        print(f"resumed at round {resumed_at} (crash at {before}); round {r.round} with {r.active_sessions}")

        # --- healthchecks: the server and every worker container healthy
        containers = {svc: c.containers(svc) for svc in workers}
        assert {svc: len(ids) for svc, ids in containers.items()} == {**HONEST, "worker-byzantine": 1}
        every_worker = [i for ids in containers.values() for i in ids]
        wait_for(
            lambda: all(_health(i) == "healthy" for i in [server, *every_worker]),
            120,
            2.0,
            "every healthcheck to pass",
        )

        # --- Prometheus scrapes the server and every worker container
        def targets_up() -> bool:
            try:
                targets = _prom_targets(prom_port)
            except OSError:
                return False
            up = [t for t in targets if t["health"] == "up"]
            jobs = [t["labels"]["job"] for t in up]
            return jobs.count("hgo-server") == 1 and jobs.count("hgo-worker") == n_workers

        wait_for(targets_up, 120, 2.0, "Prometheus to scrape the server and every worker")
        services_up = sorted(
            t["labels"].get("service", "")
            for t in _prom_targets(prom_port)
            if t["labels"]["job"] == "hgo-worker"
        )
        assert services_up == sorted(
            s for s, n in {**HONEST, "worker-byzantine": 1}.items() for _ in range(n)
        )

        # --- a worker container is killed: it stays down, training goes on without it
        victim = containers["worker-average"][0]
        _run(["docker", "kill", victim])
        at_kill = reply().round
        wait_for(lambda: training_at(at_kill + 50), 180, 0.5, "training to go on after the worker kill")
        assert not _inspect(victim)["State"]["Running"]

        # --- to the end of the run: the server exits 0 and stays down, so do the workers
        wait_for(lambda: _inspect(server)["State"]["Status"] == "exited", 600, 2.0, "the end of training")
        assert _inspect(server)["State"]["ExitCode"] == 0
        print(f"training done {time.monotonic() - t_up:.0f} s after `up`")
        wait_for(
            lambda: all(_inspect(i)["State"]["Status"] == "exited" for i in every_worker),
            60,
            1.0,
            "the workers to exit",
        )
        exits = {i: _inspect(i)["State"]["ExitCode"] for i in every_worker}
        assert exits.pop(victim) == 137 and set(exits.values()) == {0}, exits

        # --- the round log in the named volume
        (volume,) = _run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={c.project}",
                "--filter",
                "label=com.docker.compose.volume=hgo-data",
            ]
        ).stdout.split()
        text = _run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "-v",
                f"{volume}:/data:ro",
                "--entrypoint",
                "cat",
                images.hgo,
                "/data/rounds.jsonl",
            ]
        ).stdout
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert {rec["round"] for rec in records} == set(range(ROUNDS))
        # the resumed server appended to the log from its checkpoint: rounds 0..a before the
        # crash, then resumed_at..end, rerunning at most the rounds since the last checkpoint
        rounds = [rec["round"] for rec in records]
        cut = next((i for i in range(1, len(rounds)) if rounds[i] != rounds[i - 1] + 1), len(rounds))
        assert rounds[:cut] == list(range(cut)), rounds[:cut][-5:]
        assert rounds[cut:] == list(range(resumed_at if cut < len(rounds) else ROUNDS, ROUNDS))
        assert 0 <= cut - resumed_at <= 10 or cut == len(rounds), (cut, resumed_at)  # --checkpoint-every 10
        assert any(w["byzantine"] for rec in records for w in rec["workers"])
        final = [rec for rec in records if rec.get("accuracy") is not None][-1]
        assert final["round"] == ROUNDS - 1
        print(f"final accuracy {final['accuracy']:.4f} (median, 1 alie of {n_workers})")
        assert final["accuracy"] > 0.85

        # --- every worker service is now absent from Compose's DNS (like a 0-replica service):
        # Prometheus keeps resolving them (dns_sd refresh 15 s) without logging an error
        time.sleep(20)
        noisy = [ln for ln in _logs(prom).splitlines() if "level=error" in ln or "level=warn" in ln]
        assert noisy == [], noisy[:5]
        c.run("down", "--volumes", "--remove-orphans", "--timeout", "5")
        assert c.leftovers() == {"containers": [], "networks": [], "volumes": []}
    print(f"compose test {time.monotonic() - t_up:.0f} s")
    assert c.leftovers() == {"containers": [], "networks": [], "volumes": []}
