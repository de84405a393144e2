"""Run docker-compose.yml's HGO services as plain processes, without a container engine.

Used by tests/test_compose_topology.py and tests/test_prometheus.py. What a Compose
engine would do, done by hand:

* interpolate ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?message}`` and
  ``$$`` with the given environment (Compose interpolation rules), then parse the YAML;
* take each service's argv as its ``entrypoint`` (else the ENTRYPOINT of the Dockerfile
  stage it builds) followed by its ``command``, and its ``environment``;
* start ``deploy.replicas`` instances of each service, each in its own network namespace
  (``ip netns`` + a veth pair into one bridge, like Compose's default network) when the
  machine allows it (root and ``ip``), else on loopback;
* replace the Compose service hostnames in the arguments by the instances' addresses
  (Compose's DNS), and map named-volume mount points to directories under the test's
  tmp dir.

In network namespaces the commands run with exactly their Compose ports (every instance
has its own ports, as in a container). On loopback the listening ports (``--port``,
``--metrics-port``) are replaced by free ones, since all instances share one stack.
Namespaces, veths and the bridge are removed on ``close`` even when the test failed, and
stale ones left by a killed run are removed on the next start.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.procs import ROOT, ProcessGroup, console, free_port

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
_PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
_PROXY_VARS += tuple(v.upper() for v in _PROXY_VARS)
NS_PREFIX = "hgoct"  # network namespaces of this helper: hgoct<pid>s<n>

_VAR = re.compile(
    r"\$\$"  # an escaped dollar
    r"|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}"  # ${VAR...}
    r"|\$([A-Za-z_][A-Za-z0-9_]*)"  # $VAR
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose-style variable interpolation of ``text`` (raises ValueError for ``:?`` errors)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(6)
        value = env.get(name)
        if m.group(2) is not None:  # ${VAR:-d} (unset or empty) / ${VAR-d} (unset)
            use_default = value is None or (m.group(2) == ":-" and value == "")
            return m.group(3) if use_default else str(value)
        if m.group(4) is not None:  # ${VAR:?err} / ${VAR?err}
            if value is None or (m.group(4) == ":?" and value == ""):
                raise ValueError(f"required variable {name} is missing: {m.group(5)}")
            return str(value)
        return "" if value is None else str(value)

    return _VAR.sub(sub, text)


def load_compose(env: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml interpolated with ``env`` (default: no variables set) and parsed."""
    doc = yaml.safe_load(interpolate(path.read_text(), env or {}))
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return doc


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, dict[str, Any]]:
    """Per build stage: its base, and the exec-form ENTRYPOINT / CMD / HEALTHCHECK / USER it sets.

    A stage built ``FROM`` another stage inherits what it does not set itself.
    """
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, line
            base, name = m.group(1), (m.group(2) or f"stage{len(stages)}")
            current = dict(stages.get(base, {}))
            current.update({"name": name, "base": base, "sets": set()})
            stages[name] = current
        elif current is not None and word in ("ENTRYPOINT", "CMD", "USER", "HEALTHCHECK", "EXPOSE"):
            if word in ("ENTRYPOINT", "CMD"):
                current[word] = json.loads(rest)  # exec form only (hadolint DL3025)
            elif word == "HEALTHCHECK":
                m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
                current[word] = json.loads(m.group(1)) if m else rest
            elif word == "EXPOSE":
                current[word] = rest.split()
            else:
                current[word] = rest.strip()
            current["sets"].add(word)
    return stages


def service_argv(service: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The service's ``entrypoint`` (else its build target's ENTRYPOINT) and ``command`` (else CMD).

    docker-compose.yml builds one image (the server service's build target) and every HGO
    service names its own entrypoint; a service without ``build`` runs that image.
    """
    target = (service.get("build") or {}).get("target")
    stage = stages[target] if target else {}
    entry = list(service.get("entrypoint") or stage.get("ENTRYPOINT") or [])
    command = service.get("command")
    if command is None:
        command = stage.get("CMD") or []
    if isinstance(command, str):
        command = command.split()
    return [*entry, *[str(c) for c in command]]


def netns_available() -> tuple[bool, str]:
    """Whether instances can get their own network namespaces here, and why not."""
    if os.geteuid() != 0:
        return False, "not root"
    if shutil.which("ip") is None:
        return False, "no `ip` command (iproute2)"
    probe = f"{NS_PREFIX}{os.getpid()}probe"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return (True, "") if ok else (False, "`ip netns add` failed (no CAP_SYS_ADMIN?)")


def _ip(*args: str, check: bool = True) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


def _cleanup_stale() -> None:
    """Remove namespaces/links of earlier runs whose process is gone (a killed pytest)."""
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{NS_PREFIX}(\d+)s\d+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _ip("netns", "del", name, check=False)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False)
    for m in re.finditer(r"^\d+: (hg[bv](\d+)[^:@]*)", links.stdout, re.MULTILINE):
        if not Path(f"/proc/{m.group(2)}").exists():
            _ip("link", "del", m.group(1), check=False)


def _allow_bridge_forwarding(bridge: str) -> list[str] | None:
    """Let frames between the namespaces on ``bridge`` through iptables' FORWARD chain.

    With br_netfilter loaded (Docker loads it and sets the FORWARD policy to DROP), bridged
    traffic between two of our namespaces goes through FORWARD and would be dropped. The
    rule names our bridge only; ``close`` removes it. Returns the rule, or None when
    iptables is not there (then nothing filters bridged frames either).
    """
    rule = ["FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    try:
        res = subprocess.run(["iptables", "-I", *rule], capture_output=True, check=False)
    except FileNotFoundError:
        return None
    return rule if res.returncode == 0 else None


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 under 10.231.0.0/16 that no interface or route on this machine uses yet."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=False).stdout
    start = os.getpid() % 250
    for i in range(250):
        net = ipaddress.IPv4Network(f"10.231.{(start + i) % 250 + 1}.0/24")
        if f"10.231.{(start + i) % 250 + 1}." not in used:
            return net
    raise RuntimeError("no free 10.231.x.0/24 subnet for the test bridge")


@dataclass
class Instance:
    """One running replica of a Compose service."""

    service: str
    index: int
    address: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    netns: str | None
    ports: dict[int, int] = field(default_factory=dict)  # compose port -> actual port

    @property
    def name(self) -> str:
        return f"{self.service}-{self.index}"

    def port(self, compose_port: int) -> int:
        return self.ports.get(compose_port, compose_port)

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command in this instance's network namespace."""
        return ["ip", "netns", "exec", self.netns] if self.netns else []


class ComposeTopology:
    """Start docker-compose.yml services as processes; ``close`` tears everything down."""

    def __init__(self, procs: ProcessGroup, workdir: Path, env: Mapping[str, str], *, netns: bool) -> None:
        self.procs = procs
        self.workdir = workdir
        self.env = dict(env)
        self.compose = load_compose(self.env)
        self.stages = dockerfile_stages()
        self.netns = netns
        self.instances: list[Instance] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._tag = str(os.getpid())
        self._counter = 0
        self.bridge_ip = "127.0.0.1"
        self._net: ipaddress.IPv4Network | None = None
        if netns:
            _cleanup_stale()
            self._net = _free_subnet()
            hosts = list(self._net.hosts())
            self._hosts = iter(hosts[1:])
            self.bridge_ip = str(hosts[0])
            self.bridge = f"hgb{self._tag}"[:15]
            _ip("link", "add", self.bridge, "type", "bridge")
            self._links.append(self.bridge)
            _ip("addr", "add", f"{self.bridge_ip}/{self._net.prefixlen}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            self._forward_rule = _allow_bridge_forwarding(self.bridge)

    # ------------------------------------------------------------------ network
    def _new_namespace(self) -> tuple[str, str]:
        assert self._net is not None
        n = self._counter
        ns = f"{NS_PREFIX}{self._tag}s{n}"
        host_if = f"hgv{self._tag}n{n}"[:15]
        addr = str(next(self._hosts))
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._links.append(host_if)
        _ip("link", "set", host_if, "master", self.bridge)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{addr}/{self._net.prefixlen}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return ns, addr

    # ------------------------------------------------------------------ services
    def volume_dir(self, volume: str) -> Path:
        path = self.workdir / "volumes" / volume
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _translate(self, args: list[str], service: Mapping[str, Any]) -> tuple[list[str], dict[int, int]]:
        """Hostnames -> addresses, volume mount points -> tmp dirs, (loopback) ports -> free ones."""
        out = list(args)
        for spec in service.get("volumes") or []:
            src, _, rest = str(spec).partition(":")
            mount = rest.split(":")[0]
            if src and not src.startswith((".", "/")):  # a named volume
                host = str(self.volume_dir(src))
                out = [a.replace(f"={mount}/", f"={host}/").replace(f"={mount}", f"={host}") for a in out]
        ports: dict[int, int] = {}
        if not self.netns:
            for i, a in enumerate(out):
                m = re.fullmatch(r"(--port|--metrics-port)=(\d+)", a)
                if m:
                    ports[int(m.group(2))] = free_port()
                    out[i] = f"{m.group(1)}={ports[int(m.group(2))]}"
        for inst in self.instances:  # services started earlier are resolvable (Compose DNS)
            pattern = re.compile(rf"(?<![\w.-]){re.escape(inst.service)}:(\d+)")
            out = [pattern.sub(lambda m, i=inst: f"{i.address}:{i.port(int(m.group(1)))}", a) for a in out]
        return out, ports

    def start(self, name: str, replicas: int | None = None) -> list[Instance]:
        """Start a service's replicas (``deploy.replicas`` unless given) with its exact command."""
        service = self.compose["services"][name]
        count = int(service.get("deploy", {}).get("replicas", 1)) if replicas is None else replicas
        started = []
        for k in range(count):
            argv, ports = self._translate(service_argv(service, self.stages), service)
            env = {str(key): str(v) for key, v in (service.get("environment") or {}).items()}
            # a container does not inherit the host's proxy settings (gRPC would use them)
            env.update({k: "" for k in _PROXY_VARS if k in os.environ and k not in env})
            ns, addr = self._new_namespace() if self.netns else (None, "127.0.0.1")
            self._counter += 1
            exe = console(argv[0])
            proc = self.procs.start(
                [*exe, *argv[1:]],
                name=f"{name}-{k}",
                env=env,
                prefix=["ip", "netns", "exec", ns] if ns else (),
            )
            inst = Instance(name, k, addr, argv, env, proc, ns, ports)
            self.instances.append(inst)
            started.append(inst)
        return started

    def of(self, service: str) -> list[Instance]:
        return [i for i in self.instances if i.service == service]

    def run_in(
        self, inst: Instance, argv: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in an instance's network namespace (a `docker exec`), with its environment."""
        full_env = {**os.environ, **inst.env, **(env or {})}
        return subprocess.run(
            [*inst.exec_prefix(), *argv],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        self.procs.close()  # processes first: a namespace with live processes lingers
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
        for link in reversed(self._links):
            _ip("link", "del", link, check=False)
        if getattr(self, "_forward_rule", None):
            subprocess.run(["iptables", "-D", *self._forward_rule], capture_output=True, check=False)
            self._forward_rule = None
        self._namespaces.clear()
        self._links.clear()


def wait_for(predicate: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it returns a truthy value; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def make_topology(procs: ProcessGroup, workdir: Path, env: Mapping[str, str]) -> ComposeTopology:
    """A topology in network namespaces when possible (else loopback); honours HGO_TEST_NETNS=0."""
    usable, _why = netns_available()
    if os.environ.get("HGO_TEST_NETNS", "1") == "0":
        usable = False
    return ComposeTopology(procs, workdir, env, netns=usable)


def status(address: str, port: int, token: str | None, timeout: float = 3.0) -> Any:
    """The server's StatusReply, or None when it does not answer."""
    import grpc

    from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc

    with grpc.insecure_channel(f"{address}:{port}") as channel:
        try:
            return hgo_pb2_grpc.HGOStub(channel).Status(
                hgo_pb2.StatusRequest(),
                timeout=timeout,
                metadata=(("authorization", f"Bearer {token}"),) if token else None,
            )
        except grpc.RpcError:
            return None
