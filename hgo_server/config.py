"""hgo-server configuration: flags, a TOML file, and validation at the edge.

Every setting has one name, spelled ``--some-flag`` on the command line and
``some-flag`` or ``some_flag`` in the ``--config`` TOML file; flags override the
file, the file overrides the defaults. Every error names the offending value and
the allowed range, and is raised as :class:`ConfigError` (a ValueError).

Durations (``--tau``, ``--sgd-timeout``, ``--heartbeat-ms``) share one unit with the
compute rates, the millisecond (docs/design.md §3): a bare number is milliseconds
(``60``), and ``250ms``, ``2s``, ``1.5s``, ``2min`` and ``inf`` are accepted too. In
TOML a duration may be a number (milliseconds) or such a string.

The defaults that depend on other settings are filled in by :func:`resolve`:
``--min-workers`` defaults to q, ``--num-shards`` to ``--min-workers``, ``--v`` to
``hgo_common.rounds.default_quorum(q, rule, f)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting outside its allowed range; the message names the value and the range."""


@dataclass(frozen=True)
class ServerConfig:
    """Every hgo-server setting (durations in milliseconds). See docs/server.md."""

    port: int = 50051
    bind: str = "127.0.0.1"
    q: int = 10
    v: int | None = None
    tau: float = 60.0
    tau_auto: bool = False  # --tau auto: tau_k chosen each round (hgo_common.deadline); tau = --tau-max
    tau_target: float = 0.5  # --tau auto: target block fraction b_v / d
    tau_min: float = 10.0
    tau_max: float = 1000.0
    rule: str = "average"
    f: int = 0
    lr: float = 0.1
    lr_schedule: str = "constant"
    rounds: int = 100
    model: str | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    max_train: int | None = None
    partition: str = "iid"
    num_shards: int | None = None
    seed: int = 0
    min_workers: int | None = None
    algorithm: str = "hgo"
    eval_every: int = 10
    log: str | None = None
    metrics_port: int | None = None
    metrics_bind: str | None = None  # None: the same address as --bind
    hidden: tuple[int, ...] = (30,)
    l2: float | None = None  # None: the model's own default (svm 1e-4, others 0)
    max_chunk_values: int = 16384
    sgd_timeout: float = 60_000.0
    early_close: bool = True
    heartbeat_ms: float = 2000.0
    max_message_mb: int = 64
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    resume: bool = False
    export: str | None = None
    export_every: int = 0
    stop_exit_code: int = 0
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    tokens_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    port_file: str | None = None
    # Resilience (docs/reliability.md "Resource limits"): what one peer may cost the server.
    row_bound: str = "coord:1e6"
    join_timeout: float = 5000.0
    idle_timeout: float = 10_000.0
    session_msg_rate: float = 1000.0
    session_byte_rate_mb: float | None = None  # None: derived from d and tau (Server)
    join_rate: float = 1.0
    max_sessions_per_peer: int = 1024
    evict_after: int = 20
    nofile: int | None = None

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (the token is masked)."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        if out["token"] is not None:
            out["token"] = "***"
        return out


FIELDS = {f.name for f in dataclasses.fields(ServerConfig)}
_INT = {
    "port", "q", "v", "f", "rounds", "seed", "min_workers", "eval_every", "metrics_port",
    "max_chunk_values", "num_shards", "checkpoint_every", "max_message_mb", "max_train", "export_every",
    "stop_exit_code",
    "max_sessions_per_peer", "evict_after", "nofile",
}  # fmt: skip
_FLOAT = {"lr", "l2", "tau_target", "session_msg_rate", "session_byte_rate_mb", "join_rate"}
_DURATION = {"tau", "sgd_timeout", "heartbeat_ms", "tau_min", "tau_max", "join_timeout", "idle_timeout"}
_BOOL = {"early_close", "resume", "tau_auto"}
_STR = FIELDS - _INT - _FLOAT - _DURATION - _BOOL - {"hidden"}

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|sec|min)?\s*$")
_UNIT_MS = {None: 1.0, "ms": 1.0, "s": 1000.0, "sec": 1000.0, "min": 60_000.0}


def parse_duration_ms(value: object, name: str = "duration") -> float:
    """Milliseconds from ``60``, ``"60"``, ``"250ms"``, ``"2s"``, ``"2min"`` or ``"inf"``.

    Raises ConfigError naming ``name`` and the value for anything else (negative,
    NaN, unknown unit).
    """
    if isinstance(value, bool):
        raise ConfigError(f"{_flag(name)}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        ms = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "infinity", "+inf"):
            return math.inf
        m = _DURATION_RE.match(text)
        if m is None:
            raise ConfigError(
                f"{_flag(name)}: cannot read {value!r} as a duration; expected milliseconds "
                "like 60, or 250ms, 2s, 2min, inf"
            )
        ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    else:
        raise ConfigError(f"{_flag(name)}: expected a duration, got {value!r}")
    if math.isnan(ms) or ms < 0:
        raise ConfigError(f"{_flag(name)}: duration must be >= 0 ms or inf, got {value!r}")
    return ms


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


TAU_AUTO = math.nan
"""What ``--tau auto`` is read as until :func:`resolve` sets ``tau_auto`` and ``tau = --tau-max``.

NaN cannot come from any duration a user types (:func:`parse_duration_ms` refuses it)."""


class _AutoQuorum(int):
    """``--v auto`` until :func:`resolve` computes it (told apart from a typed integer by identity)."""

    def __repr__(self) -> str:
        return "'auto'"


V_AUTO = _AutoQuorum(0)
"""What ``--v auto`` is read as: resolved to ``rounds.auto_quorum(q, rule, f)``, the paper's
v = floor(f / alpha) + 1 with alpha = 0.5 (never fewer rows than the rule needs)."""


def _coerce(name: str, value: object) -> Any:
    """One setting from a flag string or a TOML value to its Python type."""
    if name == "tau" and isinstance(value, str) and value.strip().lower() == "auto":
        return TAU_AUTO
    if name == "v" and isinstance(value, str) and value.strip().lower() == "auto":
        return V_AUTO
    if name in _DURATION:
        return parse_duration_ms(value, name)
    if name in _BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{_flag(name)}: expected true or false, got {value!r}")
    if name == "hidden":
        items: Sequence[object]
        if isinstance(value, str):
            items = [s for s in value.replace(" ", "").split(",") if s]
        elif isinstance(value, list | tuple):
            items = value
        elif isinstance(value, int) and not isinstance(value, bool):
            items = [value]
        else:
            raise ConfigError(
                f"--hidden: expected comma-separated layer widths like 30 or 64,32, got {value!r}"
            )
        try:
            sizes = tuple(int(str(s)) for s in items)
        except ValueError:
            raise ConfigError(
                f"--hidden: expected comma-separated positive integers like 30 or 64,32, got {value!r}"
            ) from None
        return sizes
    if name in _INT:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{_flag(name)}: expected an integer, got {value!r}")
        try:
            if isinstance(value, str | int | float):
                return int(value.strip()) if isinstance(value, str) else int(value)
            raise TypeError(type(value).__name__)
        except (TypeError, ValueError):
            raise ConfigError(f"{_flag(name)}: expected an integer, got {value!r}") from None
    if name in _FLOAT:
        if isinstance(value, bool):
            raise ConfigError(f"{_flag(name)}: expected a number, got {value!r}")
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(f"{_flag(name)}: expected a number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{_flag(name)}: expected a string, got {value!r}")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: keys with dashes or underscores; unknown keys are an error.

    A ``[server]`` table is read when present (so one file can hold several programs'
    settings); otherwise the top level.
    """
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        # A directory, a file without read permission, binary junk: name the file and why.
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--config: cannot read {str(p)!r}: {why}; expected a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {str(p)!r} is not valid TOML: {exc}") from None
    table = raw.get("server", raw) if isinstance(raw.get("server"), dict) else raw
    out: dict[str, Any] = {}
    unknown = []
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            unknown.append(key)
            continue
        try:
            out[name] = _coerce(name, value)
        except ConfigError as exc:
            raise ConfigError(f"--config {str(p)!r}, key {key!r}: {exc}") from None
    if unknown:
        raise ConfigError(
            f"--config {str(p)!r}: unknown keys {sorted(unknown)}; known keys: "
            f"{sorted(k.replace('_', '-') for k in FIELDS)}"
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    """The hgo-server argument parser (every option defaults to 'not given')."""
    p = argparse.ArgumentParser(
        prog="hgo-server",
        description="HGO parameter server (Boubouh et al., SRDS 2022): asyncio gRPC, robust aggregation.",
        argument_default=argparse.SUPPRESS,
    )
    d = ServerConfig()
    add = p.add_argument
    add("--config", metavar="FILE", help="TOML file with the same keys as the flags (flags override it)")
    add("--port", help=f"TCP port; 0 picks a free one and prints it (default {d.port})")
    add("--bind", help=f"address to listen on (default {d.bind}; 0.0.0.0 for every interface)")
    add("--port-file", metavar="FILE", help="write the bound port to FILE once serving (default: none)")
    add("--q", help=f"workers sampled per round (default {d.q})")
    add("--v", help="quorum: the block is the v-th longest prefix; an integer, or auto: the paper's "
        "floor(f/0.5)+1 (rounds.auto_quorum) (default: rounds.default_quorum = max(ceil(q/2), rule's need))")
    add("--tau", help=f"round deadline tau in ms (a bare number), or 250ms, 2s, inf, or auto: chosen each "
        f"round to meet --tau-target (default {d.tau:g} ms)")
    add("--tau-target", help=f"--tau auto: the block fraction b_v/d to reach, in (0, 1] "
        f"(default {d.tau_target})")
    add("--tau-min", help=f"--tau auto: the shortest deadline (default {d.tau_min:g} ms)")
    add("--tau-max", help=f"--tau auto: the longest deadline (default {d.tau_max:g} ms)")
    add("--rule", help="aggregation rule, e.g. average, median, nnm+krum, package.module:Name or an "
        f"installed plug-in (default {d.rule})")  # fmt: skip
    add("--f", help=f"Byzantine workers the rule must tolerate (default {d.f})")
    add("--lr", help=f"learning rate gamma (default {d.lr})")
    add("--lr-schedule", help=f"constant | inv-sqrt-block (default {d.lr_schedule})")
    add("--rounds", help=f"training rounds (default {d.rounds})")
    add("--model", help="linear | logistic | svm | mlp | cnn (torch extra) | package.module:Name | an "
        "installed plug-in (default: the dataset's default model)")  # fmt: skip
    add("--hidden", help="mlp hidden layer widths, comma-separated (default 30)")
    add("--l2", help="l2 regularization (default: the model's, 1e-4 for svm and 0 otherwise)")
    add("--dataset", help=f"dataset name, package.module:Name or an installed plug-in (default {d.dataset})")
    add("--data-dir", metavar="DIR",
        help="directory with the file-based datasets (mnist, phishing, boston, cifar10); bundled "
        "scikit-learn datasets need none")  # fmt: skip
    add("--max-train", help="use at most this many training examples (default: all)")
    add("--partition", help=f"iid | classes:K | dirichlet:ALPHA (default {d.partition})")
    add("--num-shards", help="data shards (default: --min-workers)")
    add("--seed", help=f"run seed: model init, orders, sampling, partition (default {d.seed})")
    add("--min-workers", help="active sessions before training starts (default: q)")
    add("--algorithm", help=f"hgo | sgd (default {d.algorithm})")
    add("--eval-every", help=f"evaluate on the test split every N rounds; 0 = at the end only "
        f"(default {d.eval_every})")  # fmt: skip
    add("--log", metavar="FILE", help="per-round JSON-lines log; an existing file is appended to, "
        "never truncated (default: none)")  # fmt: skip
    add("--metrics-port", help="serve Prometheus metrics on this port (default: off)")
    add("--metrics-bind", metavar="ADDR", help="address of the metrics endpoint (default: --bind's)")
    add("--max-chunk-values", help=f"most float32 values per gradient chunk (default {d.max_chunk_values})")
    add("--sgd-timeout", help="hard round timeout for sgd with tau=inf: ms, or 2s, 2min (default 60s)")
    add("--early-close", action=argparse.BooleanOptionalAction,
        help="close a round as soon as every sampled worker is finished (default on)")  # fmt: skip
    add(
        "--heartbeat-ms",
        help=f"heartbeat interval in ms (or 2s); silent for 3 intervals = dropped "
        f"(default {d.heartbeat_ms:g} ms)",
    )
    add("--max-message-mb",
        help=f"gRPC message size limit in MiB, both directions (default {d.max_message_mb})")  # fmt: skip
    add("--checkpoint-dir", metavar="DIR", help="write checkpoints here (default: no checkpoints)")
    add("--checkpoint-every", help=f"checkpoint every N rounds (default {d.checkpoint_every})")
    add("--resume", action="store_true", help="resume from the latest checkpoint in --checkpoint-dir")
    add("--export", metavar="FILE",
        help="write the trained model to FILE (.npz, hgo_common.models.load reads it) when training "
        "ends (default: not written)")  # fmt: skip
    add("--stop-exit-code",
        help="exit status after a SIGTERM/SIGINT that ends training early (default 0; the Kubernetes "
        "Job uses 143 so that an evicted server is retried, not counted as finished)")  # fmt: skip
    add("--export-every", help="also write --export every N rounds (default 0: only at the end)")
    add("--token", help="require this bearer token from workers (visible in ps: prefer --token-file "
        "or $HGO_TOKEN)")  # fmt: skip
    add("--token-file", metavar="FILE",
        help="require the bearer token in FILE (one line; default: $HGO_TOKEN when set, else no token)")
    add("--tokens-file", metavar="FILE", help="require one of the tokens in FILE")
    add("--tls-cert", metavar="FILE", help="server certificate (PEM)")
    add("--tls-key", metavar="FILE", help="server private key (PEM)")
    add("--tls-ca", metavar="FILE", help="CA for client certificates (mutual TLS)")
    add("--row-bound", help="most one row may contribute before aggregation: coord:B (clip every value "
        f"to [-B, B]), norm:B (clip the row's l2 norm to B) or off (default {d.row_bound})")  # fmt: skip
    add("--join-timeout", help=f"a new stream must send its Join within this (default {d.join_timeout:g} ms)")
    add("--idle-timeout", help="close a connection that carries no call for this long; also the TLS/HTTP2 "
        f"handshake timeout (default {d.idle_timeout:g} ms)")  # fmt: skip
    add("--session-msg-rate", help="messages per second one session may send (token bucket, 1 s burst; "
        f"reading pauses beyond it; 0 = no limit; default {d.session_msg_rate:g})")  # fmt: skip
    add("--session-byte-rate-mb", help="MiB per second one session may send (token bucket, 1 s burst; "
        "default: 2 full gradients per tau plus 1 MiB)")  # fmt: skip
    add("--join-rate", help="Joins per second one identity may make (burst 5; 0 = no limit; "
        f"default {d.join_rate:g})")  # fmt: skip
    add("--max-sessions-per-peer", help="active sessions from one peer address; 0 = no cap "
        f"(default {d.max_sessions_per_peer})")  # fmt: skip
    add("--evict-after", help="end a session sampled into this many rounds in a row without sending a "
        f"value (and silent for 3 heartbeats); 0 = never (default {d.evict_after})")  # fmt: skip
    add("--nofile", help="raise the open-file limit (RLIMIT_NOFILE) to this at start "
        "(default: the hard limit); the effective limit is logged")  # fmt: skip
    return p


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    """Defaults, then ``--config FILE``, then flags; resolved and validated.

    Raises ConfigError (never SystemExit) for bad values; argparse itself still exits
    on unknown flags and ``--help``.
    """
    ns = vars(build_parser().parse_args(argv))
    settings: dict[str, Any] = {}
    config_file = ns.pop("config", None)
    if config_file is not None:
        settings.update(load_toml(config_file))
    for name, value in ns.items():
        settings[name] = _coerce(name, value)
    return resolve(ServerConfig(**settings))


def to_toml(cfg: ServerConfig) -> str:
    """``cfg`` as a TOML ``--config`` file: every setting that differs from the default.

    ``load_toml`` reads it back to the same config (durations as milliseconds). The
    token is never written: pass it in ``$HGO_TOKEN`` or a token file.
    """
    defaults = ServerConfig()
    lines = ["# hgo-server --config file (hgo_server.config.to_toml)"]
    for f in dataclasses.fields(ServerConfig):
        value = getattr(cfg, f.name)
        if f.name == "token" or value is None or value == getattr(defaults, f.name):
            continue
        lines.append(f"{f.name.replace('_', '-')} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise ConfigError("a NaN setting cannot be written to TOML")
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")


def _readable_file(flag: str, path: str | None) -> None:
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{flag}: file {path!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"{flag}: {path!r} is not a regular file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None


def _writable_dir(flag: str, directory: Path, target: str) -> None:
    """``directory`` is (or can be created as) a directory this process can write ``target`` into."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the nearest existing ancestor decides whether mkdir can work
    if not probe.is_dir():
        raise ConfigError(f"{flag}: cannot create {target!r}: {str(probe)!r} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot create {target!r}: no write permission in {str(probe)!r}")


def check_paths(cfg: ServerConfig) -> None:
    """Files named on the command line exist and can be used, before the server binds.

    Called by the CLI (``hgo_server.cli.main``) right after :func:`parse_args`, which
    stays free of file-system checks so container args can be validated anywhere: a typo
    in ``--tokens-file`` or a log in a read-only place fails at once with the flag and the
    path, not at the first round. Nothing is created or modified here.
    """
    for flag, value in (
        ("--tokens-file", cfg.tokens_file),
        ("--token-file", cfg.token_file),
        ("--tls-cert", cfg.tls_cert),
        ("--tls-key", cfg.tls_key),
        ("--tls-ca", cfg.tls_ca),
    ):
        _readable_file(flag, value)
    if cfg.log is not None:
        log = Path(cfg.log)
        if log.exists():
            if not log.is_file():
                raise ConfigError(f"--log: {cfg.log!r} exists and is not a regular file")
            if not os.access(log, os.W_OK):
                raise ConfigError(f"--log: {cfg.log!r} is not writable")
        else:
            _writable_dir("--log", log.parent, cfg.log)
    if cfg.export is not None:
        export = Path(cfg.export)
        if export.is_dir():
            raise ConfigError(f"--export: {cfg.export!r} is a directory; expected a file name like model.npz")
        _writable_dir("--export", export.parent, cfg.export)
    if cfg.port_file is not None:
        parent = Path(cfg.port_file).parent
        if not parent.is_dir():
            raise ConfigError(f"--port-file: directory {str(parent)!r} of {cfg.port_file!r} does not exist")
        _writable_dir("--port-file", parent, cfg.port_file)
    if cfg.checkpoint_dir is not None:
        ck = Path(cfg.checkpoint_dir)
        if ck.exists() and not ck.is_dir():
            raise ConfigError(f"--checkpoint-dir: {cfg.checkpoint_dir!r} exists and is not a directory")
        _writable_dir("--checkpoint-dir", ck, cfg.checkpoint_dir)


def load_token(cfg: ServerConfig, env: Mapping[str, str] | None = None) -> ServerConfig:
    """The config with its shared token read from ``--token``, ``--token-file`` or ``$HGO_TOKEN``.

    Called by the CLI after :func:`check_paths`. The token must not be a placeholder
    committed to the repository nor shorter than 16 bytes (ConfigError saying how to make
    one). Without any of the three the server runs without a shared token (``--tokens-file``
    and TLS still apply).
    """
    from hgo_common.net import credentials

    source = (
        "--token" if cfg.token is not None
        else f"--token-file {cfg.token_file!r}" if cfg.token_file is not None
        else f"${credentials.TOKEN_ENV}"
    )  # fmt: skip
    try:
        token = credentials.resolve_token(cfg.token, cfg.token_file, env)
        if token is not None:
            credentials.check_token(token, source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg.replace(token=token)


def from_mapping(settings: Mapping[str, Any]) -> ServerConfig:
    """A resolved config from ``{key: value}`` (keys with dashes or underscores, values as in TOML).

    For programs that start servers in-process (tests, launchers): same coercion,
    same errors as the flags.
    """
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(
                f"unknown setting {key!r}; known: {sorted(k.replace('_', '-') for k in FIELDS)}"
            )
        out[name] = None if value is None else _coerce(name, value)
    return resolve(ServerConfig(**out))


def _range(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def resolve(cfg: ServerConfig) -> ServerConfig:
    """Fill the dependent defaults and check every range; returns the completed config."""
    from hgo_common import aggregators, rounds

    _range(0 <= cfg.port <= 65535, f"--port must be in [0, 65535], got {cfg.port}")
    _range(bool(cfg.bind.strip()), f"--bind must be a host or address, got {cfg.bind!r}")
    _range(cfg.q >= 1, f"--q must be >= 1 (workers sampled per round), got {cfg.q}")
    _range(cfg.f >= 0, f"--f must be >= 0, got {cfg.f}")
    if cfg.tau_auto or math.isnan(cfg.tau):
        cfg = _resolve_auto_tau(cfg)
    _range(cfg.tau > 0, f"--tau must be > 0 ms (or inf), got {cfg.tau:g}")
    try:
        rule = aggregators.get(cfg.rule)
    except ValueError as exc:
        raise ConfigError(f"--rule {cfg.rule!r}: {exc}") from None
    if cfg.algorithm not in rounds.ALGORITHMS:
        raise ConfigError(f"--algorithm must be one of {list(rounds.ALGORITHMS)}, got {cfg.algorithm!r}")
    if cfg.lr_schedule not in rounds.LR_SCHEDULES:
        raise ConfigError(
            f"--lr-schedule must be one of {list(rounds.LR_SCHEDULES)}, got {cfg.lr_schedule!r}"
        )
    _range(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be a positive finite number, got {cfg.lr}")
    _range(
        cfg.l2 is None or (cfg.l2 >= 0 and math.isfinite(cfg.l2)),
        f"--l2 must be a finite number >= 0, got {cfg.l2}",
    )
    need = rule.min_rows(cfg.f)
    v = cfg.v
    if v is V_AUTO:
        v = rounds.auto_quorum(cfg.q, cfg.rule, cfg.f)
    elif v is None:
        v = rounds.default_quorum(cfg.q, cfg.rule, cfg.f)
    _range(1 <= v <= cfg.q, f"--v must be in [1, q={cfg.q}], got {v}")
    if need > v:
        raise ConfigError(
            f"--rule {cfg.rule} with --f {cfg.f} needs at least {need} rows per coordinate, "
            f"but the quorum v is {v}; raise --v (and --q) to >= {need} or lower --f"
        )
    _range(cfg.rounds >= 1, f"--rounds must be >= 1, got {cfg.rounds}")
    _range(0 <= cfg.seed < 2**32, f"--seed must be in [0, 2**32), got {cfg.seed}")
    min_workers = cfg.q if cfg.min_workers is None else cfg.min_workers
    _range(min_workers >= 1, f"--min-workers must be >= 1, got {min_workers}")
    num_shards = min_workers if cfg.num_shards is None else cfg.num_shards
    _range(num_shards >= 1, f"--num-shards must be >= 1, got {num_shards}")
    _range(cfg.eval_every >= 0, f"--eval-every must be >= 0 (0: only at the end), got {cfg.eval_every}")
    if cfg.metrics_port is not None:
        _range(
            0 <= cfg.metrics_port <= 65535, f"--metrics-port must be in [0, 65535], got {cfg.metrics_port}"
        )
    if cfg.metrics_bind is not None:
        _range(
            bool(cfg.metrics_bind.strip()),
            f"--metrics-bind must be a host or address, got {cfg.metrics_bind!r}",
        )
    _range(
        bool(cfg.hidden) and all(h >= 1 for h in cfg.hidden),
        f"--hidden must be positive layer widths, got {list(cfg.hidden)}",
    )
    _range(
        1 <= cfg.max_message_mb <= 2047, f"--max-message-mb must be in [1, 2047], got {cfg.max_message_mb}"
    )
    # A chunk message carries 4 bytes per value plus a few dozen bytes of framing.
    max_values = (cfg.max_message_mb * 2**20 - 1024) // 4
    _range(
        1 <= cfg.max_chunk_values <= max_values,
        f"--max-chunk-values must be in [1, {max_values}] (fits --max-message-mb {cfg.max_message_mb}), "
        f"got {cfg.max_chunk_values}",
    )
    _range(cfg.sgd_timeout > 0, f"--sgd-timeout must be > 0 ms (or inf), got {cfg.sgd_timeout:g}")
    _range(
        10 <= cfg.heartbeat_ms < math.inf,
        f"--heartbeat-ms must be in [10 ms, inf), got {cfg.heartbeat_ms:g}",
    )
    _range(0 <= cfg.stop_exit_code <= 255, f"--stop-exit-code must be in [0, 255], got {cfg.stop_exit_code}")
    _range(cfg.export_every >= 0, f"--export-every must be >= 0 (0: only at the end), got {cfg.export_every}")
    if cfg.export_every and cfg.export is None:
        raise ConfigError(f"--export-every {cfg.export_every} needs --export FILE to write to")
    _range(cfg.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {cfg.checkpoint_every}")
    if cfg.resume and not cfg.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir DIR to resume from")
    if cfg.max_train is not None:
        _range(cfg.max_train >= 1, f"--max-train must be >= 1, got {cfg.max_train}")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError(
            f"--tls-cert and --tls-key go together, got --tls-cert {cfg.tls_cert!r} --tls-key {cfg.tls_key!r}"
        )
    if cfg.tls_ca is not None and cfg.tls_cert is None:
        raise ConfigError(f"--tls-ca {cfg.tls_ca!r} (mutual TLS) needs --tls-cert and --tls-key")
    if cfg.token is not None and not cfg.token.strip():
        raise ConfigError("--token must not be empty")
    if cfg.token is not None and cfg.token_file is not None:
        raise ConfigError("--token and --token-file are two sources of one token; give one of them")
    try:
        rounds.RowBound.parse(cfg.row_bound)
    except ValueError as exc:
        raise ConfigError(f"--row-bound: {exc}") from None
    _range(
        0 < cfg.join_timeout < math.inf,
        f"--join-timeout must be a finite duration > 0, got {cfg.join_timeout:g}",
    )
    _range(
        0 < cfg.idle_timeout < math.inf,
        f"--idle-timeout must be a finite duration > 0, got {cfg.idle_timeout:g}",
    )
    for flag, value in (
        ("--session-msg-rate", cfg.session_msg_rate),
        ("--join-rate", cfg.join_rate),
        ("--session-byte-rate-mb", cfg.session_byte_rate_mb),
    ):
        _range(
            value is None or (value >= 0 and math.isfinite(value)),
            f"{flag} must be a finite number >= 0 (0: no limit), got {value}",
        )
    _range(
        cfg.max_sessions_per_peer >= 0,
        f"--max-sessions-per-peer must be >= 0, got {cfg.max_sessions_per_peer}",
    )
    _range(cfg.evict_after >= 0, f"--evict-after must be >= 0 (0: never), got {cfg.evict_after}")
    _range(cfg.nofile is None or cfg.nofile >= 64, f"--nofile must be >= 64, got {cfg.nofile}")
    _check_data_names(cfg)
    return cfg.replace(v=v, min_workers=min_workers, num_shards=num_shards)


def _resolve_auto_tau(cfg: ServerConfig) -> ServerConfig:
    """``--tau auto``: check the target and bounds; the fixed ``tau`` becomes ``--tau-max``."""
    _range(
        0.0 < cfg.tau_target <= 1.0,
        f"--tau-target is the block fraction b_v/d to reach, in (0, 1]; got {cfg.tau_target}",
    )
    _range(
        0.0 < cfg.tau_min <= cfg.tau_max < math.inf,
        f"--tau auto needs 0 < --tau-min <= --tau-max < inf (ms), got --tau-min {cfg.tau_min:g} "
        f"--tau-max {cfg.tau_max:g}",
    )
    if cfg.algorithm != "hgo":
        raise ConfigError(
            f"--tau auto adapts HGO's deadline; --algorithm {cfg.algorithm} takes a fixed --tau (or inf)"
        )
    return cfg.replace(tau=cfg.tau_max, tau_auto=True)


def _check_data_names(cfg: ServerConfig) -> None:
    """Model, dataset and partition names, checked against their registries."""
    from hgo_common import datasets, models, plugins

    # Plug-ins ("package.module:Name" or an installed entry point) are loaded and checked
    # when the server loads its setup; here only the name.
    def known(kind: str, name: str, builtins: list[str]) -> bool:
        return name in builtins or plugins.is_reference(name) or name in plugins.entry_points(kind)

    if cfg.model is not None and not known("model", cfg.model, models.names()):
        raise ConfigError(
            f"--model must be one of {models.names()}, a 'package.module:Name' reference or an "
            f"installed plug-in (hgo-plugins lists them), got {cfg.model!r}"
        )
    if not known("dataset", cfg.dataset, datasets.names()):
        raise ConfigError(
            f"--dataset must be one of {datasets.names()}, a 'package.module:Name' reference or an "
            f"installed plug-in (hgo-plugins lists them), got {cfg.dataset!r}"
        )
    try:
        datasets.parse_partition(cfg.partition)
    except ValueError as exc:
        raise ConfigError(f"--partition {cfg.partition!r}: {exc}") from None
