"""``--mode net``: a scenario's configuration translated for real processes (the cluster
launcher :mod:`hgo_lab.cluster`: one hgo-server, hgo-worker processes over gRPC), with the
time stretch and the size reduction a real machine needs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hgo_common.spec import Population, Quorum, RunSpec
from hgo_lab import simulator
from hgo_server.config import ServerConfig, resolve

DEFAULT_NET_PROCESSES = 4  # worker processes hosting a net-mode run's n sessions


def cluster_config(
    cfg: simulator.SimConfig,
    out: Path,
    processes: int = DEFAULT_NET_PROCESSES,
    net: dict[str, Any] | None = None,
) -> tuple[Any, list[str]]:
    """The ``hgo_lab.cluster.ClusterConfig`` that runs ``cfg`` on real processes.

    ``net``: the scenario's (and variant's) ``[net]`` settings that reach the launcher:
    ``limits`` (real device constraints per profile, ``hgo_lab.constraints``: one process
    per device, root needed), ``throttle``, ``batch_by_profile``, ``server_args``,
    ``per_class`` (export the model). Returns the config and the notes on what the wire
    cannot reproduce exactly (omniscient attackers, the choice of Byzantine workers).
    """
    from hgo_lab import cluster

    notes: list[str] = []
    attack_params: list[str] = []  # the population's own parameters travel with it
    if cfg.attackers and cfg.attack:
        from hgo_common import attacks

        if attacks.get(cfg.attack).kind == "gradient":
            attack_params.append(f"estimates={max(2, cfg.estimate_batches)}")
            if cfg.byzantine_full:
                attack_params.append("full=1")
        if cfg.omniscient:
            notes.append(
                "NOTE: --mode net: Byzantine workers estimate honest gradients from their own shards "
                "(not omniscient as in the simulator)"
            )
    net = net or {}
    limits = device_limits(net.get("limits"))
    cc = cluster.ClusterConfig(
        spec=RunSpec(**RunSpec.values_of(cfg)),
        population=Population(**{**Population.values_of(cfg), "attack": cfg.attack or "foe"}),
        attack_params=attack_params,
        out=out,
        progress=False,
        server=server_config(cfg),
        # a constrained device is one process (its own cgroup and network namespace)
        per_process=1 if limits is not None else max(1, math.ceil(cfg.n / max(1, processes))),
        limits=limits,
        throttle=str(net.get("throttle", "on")),
        batch_by_profile={str(k): v for k, v in net.get("batch_by_profile", {}).items()} or None,
        server_args=[str(a) for a in net.get("server_args", [])],
        export=out / "model.npz" if net.get("per_class") else None,
    )
    return cc, notes


def device_limits(table: Any) -> Any:
    """``[net] limits = {weak = {cpu_share = 0.1, uplink = "1mbit"}, ...}`` as an
    ``hgo_lab.constraints.LimitTable`` (None without limits). Checks every value, and that
    this host can apply them (root, cgroup cpu controller, netns/tbf): the message names
    what is missing, nothing falls back to emulation."""
    if not table:
        return None
    from hgo_common import profiles
    from hgo_lab import constraints

    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"[net] limits must be a table of profile tables, got {table!r}")
    flags: dict[str, list[str]] = {}
    for prof, items in table.items():
        for key, value in items.items():
            flags.setdefault(str(key), []).append(f"{prof}={value}")
    lt = constraints.LimitTable.from_flags(flags, known_profiles=tuple(profiles.PROFILES))
    for prof in lt.by_profile:
        constraints.check_support(lt.limits(prof))
    return lt


def server_config(cfg: simulator.SimConfig) -> ServerConfig:
    """The hgo-server settings that run the scenario ``cfg`` over the wire: its run
    specification itself, with every worker of the population joined before training."""
    # the simulator's streams (sampling, C_k): its secret seed is its public one (nothing travels)
    secret = cfg.seed if cfg.secret_seed is None else cfg.secret_seed
    values = {**RunSpec.values_of(cfg), "q": cfg.q_eff, "secret_seed": secret}
    return resolve(ServerConfig(**values, min_workers=cfg.n, num_shards=cfg.n))


def run_net(
    cfg: simulator.SimConfig,
    log_path: Path,
    *,
    echo: Callable[[str], None] = print,
    start: Callable[..., Any] | None = None,
    processes: int = DEFAULT_NET_PROCESSES,
) -> list[dict[str, Any]]:
    """Run ``cfg`` as a real local cluster (``hgo-run``'s launcher); copy its round log to ``log_path``.

    ``start`` is passed to :func:`hgo_lab.cluster.run_cluster` (tests give their
    process-group launcher). The records; :func:`run_net_result` also gives d.
    """
    return list(run_net_result(cfg, log_path, echo=echo, start=start, processes=processes).records)


def run_net_result(
    cfg: simulator.SimConfig,
    log_path: Path,
    *,
    echo: Callable[[str], None] = print,
    start: Callable[..., Any] | None = None,
    processes: int = DEFAULT_NET_PROCESSES,
    net: dict[str, Any] | None = None,
) -> Any:
    """:func:`run_net`, returning the whole ``hgo_lab.cluster.ClusterResult`` (d from the
    server's Status reply, wall time, exit codes)."""
    from hgo_lab import cluster

    if cfg.dataset in simulator.FALLBACKS and not (cfg.data_dir and Path(cfg.data_dir).is_dir()):
        alt = simulator.FALLBACKS[cfg.dataset]
        echo(f"WARNING: dataset {cfg.dataset!r} not found at {cfg.data_dir}; using the bundled {alt!r}")
        cfg = simulator.with_overrides(cfg, dataset=alt, data_dir=None)
    work = log_path.with_suffix("")
    cc, notes = cluster_config(cfg, work, processes, net)
    for note in notes:
        echo(note)
    result = cluster.run_cluster(cc, start=start)
    text = (work / "round_log.jsonl").read_text(encoding="utf-8")
    log_path.write_text(text, encoding="utf-8")
    return result


NET_MIN_TAU_MS = 60.0  # the shortest deadline a net-mode run keeps (loopback latency, 2 cores)


def scale_time_for_net(cfg: simulator.SimConfig, min_tau_ms: float) -> tuple[simulator.SimConfig, str | None]:
    """Stretch a deadline too short for real sockets: τ · u and every λ_i / u.

    The simulator's time unit is abstract (the authors' "time unit" is read as 1 ms, and
    their scenarios use τ = 1). On the wire a 1 ms deadline cannot even carry w_k, so a
    net run with τ < ``min_tau_ms`` runs at u = min_tau_ms / τ: each worker's prefix
    b = λτ/s — what the figure is about — is unchanged, the rates are the simulator's own
    draws (the same λ_i on both sides), and time in the result is wall time at that scale.
    """
    tau = cfg.tau_ms
    if not math.isfinite(tau) or tau >= min_tau_ms:
        return cfg, None
    u = min_tau_ms / tau
    rates = tuple(r / u if r > 0 and math.isfinite(r) else r for r in simulator.worker_rates(cfg))
    changes: dict[str, Any] = {"rates": rates}
    if cfg.tau.auto:
        changes.update(tau_max=tau * u, tau_min=cfg.tau_min * u)
    else:
        changes["tau"] = tau * u
    note = (
        f"NOTE: --mode net stretches time by {u:g}: tau {tau:g} -> {tau * u:g} ms and every rate / {u:g} "
        "(the prefixes b = rate x tau / s are the simulator's)"
    )
    return simulator.with_overrides(cfg, **changes), note


def reduce_for_net(cfg: simulator.SimConfig, max_workers: int) -> tuple[simulator.SimConfig, str | None]:
    """Scale n (and q, f, v proportionally) down to ``max_workers`` worker processes."""
    if cfg.n <= max_workers:
        return cfg, None
    scale = max_workers / cfg.n
    q = None if cfg.q is None else max(1, min(max_workers, round(cfg.q_eff * scale)))
    attackers = min(max_workers, round(cfg.attackers * scale))
    f = min(max_workers, round(cfg.f * scale))
    v = Quorum.fixed(max(1, round(cfg.v.value * scale))) if cfg.v.kind == "fixed" else cfg.v
    new = simulator.with_overrides(cfg, n=max_workers, q=q, attackers=attackers, f=f, v=v)
    note = (
        f"NOTE: --mode net reduces n={cfg.n} -> {max_workers} workers (q={cfg.q_eff} -> {new.q_eff}, "
        f"attackers={cfg.attackers} -> {attackers}, f={cfg.f} -> {f}); results are for the reduced setting"
    )
    return new, note
