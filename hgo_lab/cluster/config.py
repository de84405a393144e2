"""What a local cluster run is: the run specification, its population and the launcher's
options (:class:`ClusterConfig`), and what each process is told (the server's config file,
each worker's command line or ``--fleet`` entry).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgo_common import profiles
from hgo_common.errors import HGOError
from hgo_common.spec import Population, RunSpec, forms
from hgo_common.spec.build import Devices, devices
from hgo_common.spec.declare import lookup
from hgo_server import config
from hgo_server.config import ServerConfig

Launcher = Callable[..., "subprocess.Popen[bytes]"]


class ClusterError(HGOError, RuntimeError):
    """The cluster could not run to completion (the message names the process and its log)."""


# hgo-run's own defaults for the run specification and the population (``make demo``: a
# 64-512-10 MLP on digits, 10 workers, tau = 100 ms, lr = 1, 300 rounds). Declared here once:
# they feed the parser's help and :meth:`ClusterConfig.make`.
RUN_DEFAULTS: dict[str, Any] = {"model": "mlp", "hidden": (512,), "lr": 1.0, "rounds": 300, "tau": 100.0}
POPULATION_DEFAULTS: dict[str, Any] = {"attack": "foe", "byzantine_full": False}
# Population settings that only the simulator can honour (hgo-run has no flag for them).
SIM_ONLY = ("omniscient", "estimate_batches", "byzantine_full", "rate_model")


@dataclass
class ClusterConfig:
    """A local cluster run: the run specification, its population and the launcher's options.

    ``spec`` goes to ``hgo-server`` as its ``--config`` file (the spec itself, written by
    ``hgo_common.spec.forms``); ``population`` decides the worker processes (n, profiles or
    rates, batch size, budget policy, attackers). Build one from flat keyword arguments
    with :meth:`make` (the same names as the flags).
    """

    spec: RunSpec = field(default_factory=lambda: RunSpec(**RUN_DEFAULTS))
    population: Population = field(default_factory=lambda: Population(**POPULATION_DEFAULTS))
    attack_params: list[str] = field(default_factory=list)  # --attack-param KEY=VALUE, for the attackers
    out: Path = Path("runs/demo")
    profiles: list[str] | None = None  # explicit profile per worker (overrides the mix)
    late: int = 0  # extra workers that join once the server reached ``late_round``
    late_round: int = 0
    server_args: list[str] = field(default_factory=list)  # extra hgo-server flags, over the config
    worker_args: list[str] = field(default_factory=list)
    # The server's settings as one ServerConfig; None: the spec with this launcher's
    # min-workers and shards (:func:`server_config`).
    server: ServerConfig | None = None
    export: Path | None = None  # the trained model file (hgo-server --export); None: not written
    timeout_s: float = 900.0
    progress: bool = True
    # Device sessions per worker process (hgo-worker --fleet): 1 is one device per process,
    # as on real hardware; a lab emulating n = 100 devices on one machine packs them.
    per_process: int = 1
    # Real device constraints per profile (hgo_lab.constraints: CPU share, uplink, downlink,
    # latency); None or empty: every worker runs unconstrained on loopback.
    limits: Any = None
    # hgo-worker --throttle for every worker: "off" drops the emulated rate λ_i (no --rate),
    # each device releases what it really computes and sends (issue 21). Constrained devices
    # run with "off" whatever this says.
    throttle: str = "on"
    # s_i per profile, over the population's batch size (e.g. {"weak": 1}: the batch the
    # coordinates-first rule gives a device that cannot deliver d by tau, chosen here because
    # --throttle off has no assumed λ to plan it from).
    batch_by_profile: dict[str, int] | None = None
    # Give worker i data shard i whatever the order of joins (a tokens file with one identity
    # per worker and ``shard=i``). None: on for a ``hardware:`` partition, whose shards belong
    # to profiles (worker i has profile i); an anonymous worker gets the least-held shard at
    # its join, so a device slowed by real constraints would get a fast device's shard.
    pin_shards: bool | None = None

    @classmethod
    def make(cls, **kw: Any) -> ClusterConfig:
        """A config from flat keyword arguments: run-spec and population settings by their names
        (``workers`` and ``byzantine`` are old spellings of ``n`` and ``attackers``), the
        launcher's options by theirs. ``f`` defaults to ``attackers`` for a rule that claims
        robustness, else 0 (average tolerates nothing); None means "not set"."""
        spec_keys, pop_keys = lookup(RunSpec), lookup(Population)
        launcher = {f.name for f in dataclasses.fields(cls)} - {"spec", "population"}
        spec_kw: dict[str, Any] = dict(RUN_DEFAULTS)
        pop_kw: dict[str, Any] = dict(POPULATION_DEFAULTS)
        own: dict[str, Any] = {}
        for key, value in kw.items():
            if key in launcher:
                own[key] = value
            elif key in spec_keys:
                spec_kw[key] = value
            elif key in pop_keys or key == "byzantine":
                pop_kw["attackers" if key == "byzantine" else key] = value
            else:
                raise TypeError(f"ClusterConfig.make: unknown setting {key!r}")
        spec_kw = {k: v for k, v in spec_kw.items() if v is not None}
        pop_kw = {k: v for k, v in pop_kw.items() if v is not None}
        if "f" not in spec_kw:  # the rule tolerates the attackers it is run with, if it claims to
            from hgo_common import aggregators
            from hgo_common.spec.run import robust

            attackers = int(pop_kw.get("attackers", 0))
            try:
                claims = robust(aggregators.get(str(spec_kw.get("rule", "average"))), attackers)
            except ValueError:
                claims = True  # an unknown rule: the spec's own check names it
            spec_kw["f"] = attackers if claims else 0
        population = Population(**forms.coerce(Population, pop_kw))
        return cls(spec=RunSpec(**forms.coerce(RunSpec, spec_kw)), population=population, **own)

    # -- what the launcher reads of the population and the spec
    @property
    def workers(self) -> int:
        return self.population.n

    @property
    def byzantine(self) -> int:
        return self.population.attackers

    @property
    def rounds(self) -> int:
        return self.spec.rounds

    def validate(self) -> None:
        """Raise ValueError (SpecError) naming the first bad value."""
        pop = self.population.checked(late=self.late)
        self.spec.checked(n=pop.n)
        if not self.timeout_s > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {self.timeout_s}")
        if pop.attackers:
            from hgo_common import attacks

            try:
                attacks.get(str(pop.attack))  # built-in, package.module:Name or installed plug-in
            except ValueError as exc:
                raise ValueError(f"--attack {pop.attack!r}: {exc}") from None
            attacks.parse_params(self.attack_params)  # KEY=VALUE shape; the worker checks the keys
        if self.per_process > 1 and pins_shards(self):
            raise ValueError(
                f"--sessions-per-process {self.per_process} with shards pinned to workers (partition "
                f"{self.spec.partition!r}: worker i holds shard i): use --sessions-per-process 1"
            )
        if self.per_process < 1:
            raise ValueError(f"--sessions-per-process must be >= 1, got {self.per_process}")
        if self.limits is not None and self.limits.any() and self.per_process > 1:
            raise ValueError(
                f"--sessions-per-process {self.per_process} with device limits: a constrained device is one "
                "process (its own cgroup and network namespace); use --sessions-per-process 1"
            )
        if self.throttle not in ("on", "off"):
            raise ValueError(f"throttle must be 'on' or 'off', got {self.throttle!r}")
        if self.throttle == "off" and pop.budget_policy != "fixed":
            raise ValueError(
                f"throttle 'off' needs budget policy 'fixed', got {pop.budget_policy!r}: the other policies "
                "plan s_i and b_i from an assumed rate (give a per-profile batch size instead)"
            )
        for prof, s in (self.batch_by_profile or {}).items():
            if prof not in profiles.PROFILES:
                raise ValueError(
                    f"batch size for unknown profile {prof!r}; expected one of {sorted(profiles.PROFILES)}"
                )
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise ValueError(f"batch size of profile {prof!r} must be an integer >= 1, got {s!r}")
        if self.late < 0 or self.late_round < 0:
            raise ValueError(f"--late and --late-round must be >= 0, got {self.late}, {self.late_round}")
        if self.profiles is not None and len(self.profiles) != pop.n + self.late:
            raise ValueError(
                f"profiles lists {len(self.profiles)} values, expected one per worker ({pop.n + self.late})"
            )
        if self.profiles is None:
            self.worker_profiles()  # validates the mix
        else:
            bad = [p for p in self.profiles if p not in (*profiles.PROFILES, "custom")]
            if bad:
                raise ValueError(f"unknown profile {bad[0]!r}; expected one of {sorted(profiles.PROFILES)}")

    def worker_profiles(self) -> list[str]:
        """Profile of each worker (initial ones, then late ones)."""
        if self.profiles is not None:
            return list(self.profiles)
        mix: Any = self.population.mix
        if isinstance(mix, str) and mix not in profiles.MIXES:
            mix = profiles.parse_mix(mix)
        late = list(profiles.assign(self.late, mix)) if self.late else []
        return list(profiles.assign(self.population.n, mix)) + late

    def devices(self) -> Devices:
        """Who is who among the initial workers: the simulator's draw (``hgo_common.spec.devices``)."""
        names = self.worker_profiles()[: self.population.n]
        return devices(self.population, self.spec.seed, profile_names=names)

    def byzantine_indices(self) -> list[int]:
        """The Byzantine workers: the same draw among the n as the simulator's."""
        return [int(i) for i in np.flatnonzero(self.devices().byzantine)]


def _module_argv(console_name: str, module: str) -> list[str]:
    exe = Path(sys.executable).parent / console_name
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def server_config(cfg: ClusterConfig) -> ServerConfig:
    """The hgo-server settings of the run: ``cfg.server``, or the run specification itself
    with q resolved for the population.

    Training starts once every initial worker has joined (``--min-workers`` = workers),
    so the first rounds sample from the whole fleet, not from the fastest starters. Port,
    port file and round log are the launcher's (set on the command line).
    """
    if cfg.server is not None:
        return cfg.server
    n = cfg.population.n
    values = {**RunSpec.values_of(cfg.spec), "q": cfg.spec.q_for(n)}
    return config.resolve(ServerConfig(**values, min_workers=n, num_shards=n + cfg.late))


def server_argv(cfg: ClusterConfig, config_file: Path, port_file: Path, log_file: Path) -> list[str]:
    """hgo-server's command line: the run's settings in ``config_file`` (written by
    :func:`write_server_config`), the launcher's port and log, then ``cfg.server_args``."""
    return [
        *_module_argv("hgo-server", "hgo_server.cli"), "--config", str(config_file),
        "--port", "0", "--port-file", str(port_file), "--log", str(log_file),
        *(["--export", str(cfg.export)] if cfg.export is not None else []), *cfg.server_args,
    ]  # fmt: skip


def write_server_config(cfg: ClusterConfig, path: Path) -> Path:
    """Write the run's :func:`server_config` as an hgo-server ``--config`` TOML file."""
    path.write_text(config.to_toml(server_config(cfg)), encoding="utf-8")
    return path


def worker_session(cfg: ClusterConfig, i: int, profile: str, fleet: Devices | None = None) -> dict[str, Any]:
    """Worker i's own settings (an ``hgo-worker --fleet`` entry): name, profile, seed, rate, attack.

    ``fleet``: ``cfg.devices()``, drawn once by a caller that builds many sessions."""
    pop = cfg.population
    fleet = cfg.devices() if fleet is None else fleet
    initial = i < pop.n  # late workers: their own seed and draw
    seed = fleet.seeds[i] if initial else cfg.spec.seed * 1000 + i
    sess: dict[str, Any] = {"name": f"w{i}-{profile}", "profile": profile, "seed": seed}
    if cfg.batch_by_profile and profile in cfg.batch_by_profile:
        sess["batch_size"] = int(cfg.batch_by_profile[profile])
    if cfg.throttle == "off":
        pass  # no emulated rate: the device releases what it really computes
    elif pop.rates is not None:
        sess["rate"] = float(pop.rates[i])
    elif initial:
        sess["rate"] = fleet.rates[i]
    if initial and bool(fleet.byzantine[i]):
        from hgo_common import attacks

        items = [f"{k}={v}" for k, v in pop.attack_params.items()] + list(cfg.attack_params)
        if pop.attack not in ("label-flip", "silent"):
            items = [f"n={cfg.workers + cfg.late}", f"f={cfg.byzantine}", *items]
        sess["attack"] = pop.attack
        sess["attack_params"] = attacks.parse_params(items)
    return sess


def pins_shards(cfg: ClusterConfig) -> bool:
    """Whether worker i gets shard i by identity (:attr:`ClusterConfig.pin_shards`)."""
    if cfg.pin_shards is not None:
        return cfg.pin_shards
    return str(cfg.spec.partition).startswith("hardware")


def write_shard_tokens(cfg: ClusterConfig, out: Path) -> tuple[Path, list[Path]]:
    """The server's ``--tokens-file`` pinning worker i (identity ``w<i>``) to shard i, and
    each worker's ``--token-file``. Fresh random tokens per run, files readable by the owner only."""
    import secrets

    total = cfg.population.n + cfg.late
    tokens = [secrets.token_hex(16) for _ in range(total)]
    tdir = out / "tokens"
    tdir.mkdir(exist_ok=True)
    tdir.chmod(0o700)
    server_file = tdir / "server.tokens"
    server_file.write_text("".join(f"w{i} {tok} shard={i}\n" for i, tok in enumerate(tokens)))
    files = []
    for i, tok in enumerate(tokens):
        f = tdir / f"w{i}.token"
        f.write_text(tok + "\n")
        files.append(f)
    for f in (server_file, *files):
        f.chmod(0o600)
    return server_file, files


def worker_plugins(cfg: ClusterConfig) -> list[str]:
    """The plug-in model and dataset the run's spec names, which its workers must be allowed
    (``hgo-worker --allow-plugin``: a worker refuses a spec naming anything else)."""
    from hgo_common import catalog, datasets

    sc = server_config(cfg)
    model = sc.model or datasets.source(sc.dataset).default_model
    named = (("model", model), ("dataset", sc.dataset))
    return [name for kind, name in named if not catalog.is_builtin(kind, name)]


def _common_worker_argv(cfg: ClusterConfig, port: int) -> list[str]:
    return [
        *_module_argv("hgo-worker", "hgo_worker.cli"),
        "--server", f"127.0.0.1:{port}", "--batch-size", str(cfg.population.batch_size),
        "--budget-policy", cfg.population.budget_policy, "--rho", str(cfg.population.rho),
        "--reconnect-timeout", "30", *(["--throttle", "off"] if cfg.throttle == "off" else []),
        *[arg for name in worker_plugins(cfg) for arg in ("--allow-plugin", name)],
    ]  # fmt: skip


def worker_argv(
    cfg: ClusterConfig,
    i: int,
    port: int,
    profile: str,
    fleet: Devices | None = None,
    token_file: Path | None = None,
) -> list[str]:
    """One worker process for worker i (the default: one device per process)."""
    sess = worker_session(cfg, i, profile, fleet)
    argv = [*_common_worker_argv(cfg, port), "--profile", sess["profile"], "--seed", str(sess["seed"]),
            "--name", sess["name"]]  # fmt: skip
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
    if "batch_size" in sess:
        argv += ["--batch-size", str(sess["batch_size"])]  # over the common one (argparse: the last wins)
    if "rate" in sess:
        argv += ["--rate", str(sess["rate"])]
    if "attack" in sess:
        argv += ["--attack", sess["attack"]]
        for key, value in sess["attack_params"].items():
            argv += ["--attack-param", f"{key}={value}"]
    return argv + list(cfg.worker_args)


def worker_groups(cfg: ClusterConfig, ids: Sequence[int]) -> list[list[int]]:
    """Workers ``ids`` split into processes of at most ``cfg.per_process`` sessions each."""
    k = max(1, cfg.per_process)
    return [list(ids[a : a + k]) for a in range(0, len(ids), k)]
