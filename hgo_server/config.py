"""hgo-server configuration: the run specification plus the server's own options.

A server's settings are a :class:`hgo_common.spec.RunSpec` (what the run is: the same
object the simulator, ``hgo-run`` and ``hgo-experiment`` take) and the
:class:`ServerOptions` below (how this process serves it: address, auth, limits,
persistence). Both are declared once, field by field (``hgo_common.spec.declare``); the
flags, the ``--config`` TOML reader and writer and every error message are generated from
those declarations (``hgo_common.spec.forms``).

Every setting has one name, spelled ``--some-flag`` on the command line and ``some-flag``
or ``some_flag`` in the ``--config`` TOML file; flags override the file, the file
overrides the defaults. Errors name the offending value and the allowed range and are
raised as :class:`ConfigError` (``hgo_common.errors.SpecError``, a ValueError).

Durations share one unit with the compute rates, the millisecond (docs/design.md §3): a
bare number is milliseconds (``60``), and ``250ms``, ``2s``, ``1.5s``, ``2min`` and ``inf``
are accepted too.

The defaults that depend on other settings are filled in by :func:`resolve`: q defaults to
``SERVER_DEFAULT_Q``, ``--min-workers`` to q, ``--num-shards`` to ``--min-workers``, the
quorum to ``Quorum.resolve(q, rule, f)`` (a fixed :class:`~hgo_common.spec.Quorum` after it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hgo_common.datasets.local import NO_DATASET
from hgo_common.errors import SpecError
from hgo_common.federated import MAX_EVAL_FRACTION
from hgo_common.net.protocol import DEFAULT_MAX_CHUNK_VALUES, max_vector_values
from hgo_common.spec import forms
from hgo_common.spec.declare import (
    BOOL,
    DURATION,
    FLOAT,
    INT,
    STR,
    Check,
    Choice,
    above,
    at_least,
    finite_at_least,
    setting,
    within,
)
from hgo_common.spec.run import RunSpec
from hgo_common.spec.types import Quorum, parse_duration_ms

__all__ = [
    "ConfigError",
    "ServerConfig",
    "ServerOptions",
    "build_parser",
    "check_paths",
    "from_mapping",
    "load_token",
    "load_toml",
    "parse_args",
    "parse_duration_ms",
    "resolve",
    "to_toml",
]

EVALUATION_MODES = ("server", "federated", "both")
"""``--evaluation``: who scores the model on evaluation rounds (hgo_server.fedeval)."""

ConfigError = SpecError
"""A setting outside its allowed range (the project's SpecError): the message names the value and range."""


def _port() -> Check:
    return within(0, 65535)


def _address() -> Check:
    return Check(lambda s: bool(s.strip()), "be a host or address")


def _finite_duration() -> Check:
    return Check(lambda x: 0 < x < math.inf, "be a finite duration > 0")


@dataclass(frozen=True)
class ServerOptions:
    """How one hgo-server process serves a run: address, auth, limits, persistence (docs/server.md)."""

    port: int = setting(50051, INT, "TCP port; 0 picks a free one and prints it", check=_port())
    bind: str = setting(
        "127.0.0.1", STR, "address to listen on (0.0.0.0 for every interface)", check=_address()
    )
    port_file: str | None = setting(None, STR, "write the bound port to FILE once serving", metavar="FILE")
    min_workers: int | None = setting(
        None, INT, "active sessions before training starts", check=at_least(1), default_text="q"
    )
    num_shards: int | None = setting(
        None, INT, "data shards", check=at_least(1), default_text="--min-workers"
    )
    max_chunk_values: int = setting(DEFAULT_MAX_CHUNK_VALUES, INT, "most float32 values per gradient chunk")
    sgd_timeout: float = setting(
        60_000.0, DURATION, "hard round timeout for sgd with tau=inf: ms, or 2s, 2min", check=above(0)
    )
    heartbeat_ms: float = setting(
        2000.0,
        DURATION,
        "heartbeat interval (ms, or 2s); silent for 3 intervals = dropped",
        check=Check(lambda x: 10 <= x < math.inf, "be in [10 ms, inf)"),
    )
    max_message_mb: int = setting(
        64, INT, "gRPC message size limit in MiB, both directions", check=within(1, 2047)
    )
    log: str | None = setting(
        None,
        STR,
        "per-round JSON-lines log; an existing file is appended to, never truncated",
        metavar="FILE",
    )
    metrics_port: int | None = setting(
        None, INT, "serve Prometheus metrics on this port", check=_port(), default_text="off"
    )
    metrics_bind: str | None = setting(
        None,
        STR,
        "address of the metrics endpoint",
        check=_address(),
        metavar="ADDR",
        default_text="--bind's",
    )
    checkpoint_dir: str | None = setting(
        None, STR, "write checkpoints here", metavar="DIR", default_text="no checkpoints"
    )
    checkpoint_every: int = setting(10, INT, "checkpoint every N rounds", check=at_least(1))
    resume: bool = setting(False, BOOL, "resume from the latest checkpoint in --checkpoint-dir")
    export: str | None = setting(
        None,
        STR,
        "write the trained model to FILE (.npz, hgo_common.models.load reads it) when training ends",
        metavar="FILE",
        default_text="not written",
    )
    export_every: int = setting(
        0,
        INT,
        "also write --export every N rounds (0: only at the end)",
        check=at_least(0, "0: only at the end"),
    )
    stop_exit_code: int = setting(
        0,
        INT,
        "exit status after a SIGTERM/SIGINT that ends training early (the "
        "Kubernetes Job uses 143 so that an evicted server is retried)",
        check=within(0, 255),
    )
    token: str | None = setting(
        None,
        STR,
        "require this bearer token from workers (visible in ps: prefer --token-file or $HGO_TOKEN)",
        secret=True,
    )
    token_file: str | None = setting(
        None,
        STR,
        "require the bearer token in FILE (one line)",
        metavar="FILE",
        default_text="$HGO_TOKEN when set, else no token",
    )
    tokens_file: str | None = setting(
        None, STR, "require one of the tokens in FILE (one identity each)", metavar="FILE"
    )
    tls_cert: str | None = setting(None, STR, "server certificate (PEM)", metavar="FILE")
    tls_key: str | None = setting(None, STR, "server private key (PEM)", metavar="FILE")
    tls_ca: str | None = setting(None, STR, "CA for client certificates (mutual TLS)", metavar="FILE")
    join_timeout: float = setting(
        5000.0, DURATION, "a new stream must send its Join within this", check=_finite_duration()
    )
    idle_timeout: float = setting(
        10_000.0,
        DURATION,
        "close a connection that carries no call for this long; also the TLS/HTTP2 handshake timeout",
        check=_finite_duration(),
    )
    session_msg_rate: float = setting(
        1000.0,
        FLOAT,
        "messages per second one session may send (token bucket, 1 s burst; 0 = no limit)",
        check=finite_at_least(0, "0: no limit"),
    )
    session_byte_rate_mb: float | None = setting(
        None,
        FLOAT,
        "MiB per second one session may send (token bucket, 1 s burst)",
        check=finite_at_least(0, "0: no limit"),
        default_text="2 full gradients per tau plus 1 MiB",
    )
    join_rate: float = setting(
        1.0,
        FLOAT,
        "Joins per second one identity may make (burst 5; 0 = no limit)",
        check=finite_at_least(0, "0: no limit"),
    )
    max_sessions_per_peer: int = setting(
        1024, INT, "active sessions from one peer address; 0 = no cap", check=at_least(0)
    )
    evict_after: int = setting(
        20,
        INT,
        "end a session sampled into this many rounds in a row without sending "
        "a value (and silent for 3 heartbeats); 0 = never",
        check=at_least(0),
    )
    nofile: int | None = setting(
        None,
        INT,
        "raise the open-file limit (RLIMIT_NOFILE) to this at start",
        check=at_least(64),
        default_text="the hard limit",
    )
    # -- a server without training data (--dataset none; hgo_common.datasets.local)
    features: int | None = setting(
        None, INT, "--dataset none: input features of the model (every worker's --data must have them)",
        check=at_least(1), default_text="the dataset's",
    )  # fmt: skip
    classes: int | None = setting(
        None, INT, "--dataset none: classes of a classification model (workers' labels in 0..K-1)",
        check=at_least(2), default_text="the dataset's",
    )  # fmt: skip
    test_data: str | None = setting(
        None, STR, "--dataset none: a test file the server evaluates w_k on (formats of hgo-worker --data)",
        metavar="PATH", default_text="no server evaluation",
    )  # fmt: skip
    test_data_format: str = setting("auto", STR, "format of --test-data: auto, csv, libsvm, idx, cifar")
    test_label_column: str | None = setting(
        None, STR, "--test-data csv: the label column (header name or 0-based index)",
        default_text="label/target/class/y, else the last",
    )  # fmt: skip
    test_scaling: str = setting(
        "auto", STR, "--test-data: auto (standardize tabular data on its own rows), standardize or none"
    )
    # -- federated evaluation (docs/operations.md "Federated evaluation"; hgo_server.fedeval)
    evaluation: str = setting(
        "server",
        Choice(EVALUATION_MODES),
        "where the model is evaluated on evaluation rounds: server (its own test split), federated "
        "(sampled workers report metrics on their validation splits; logged, never acted on), or both",
    )
    eval_fraction: float = setting(
        0.2,
        FLOAT,
        "--evaluation federated|both: share of each worker's data held out as its validation split "
        "(seeded, never trained on)",
        check=Check(lambda x: 0 < x <= MAX_EVAL_FRACTION, f"be in (0, {MAX_EVAL_FRACTION}]"),
    )


@dataclass(frozen=True)
class ServerConfig(RunSpec, ServerOptions):
    """Every hgo-server setting: the run specification and the server's options (durations in ms)."""

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values (the token is masked)."""
        out = forms.to_mapping(self, skip_defaults=False)
        out["token"] = None if self.token is None else "***"
        return out

    def run_spec(self) -> RunSpec:
        """The run specification part (what the simulator would take for the same run)."""
        return RunSpec(**RunSpec.values_of(self))

    @property
    def quorum(self) -> int:
        """v as a number (a resolved config holds a fixed quorum)."""
        return self.quorum_for(self.q_for())


FIELDS = {f.name for f in dataclasses.fields(ServerConfig)}


def build_parser() -> argparse.ArgumentParser:
    """The hgo-server parser, generated from the declarations (every flag defaults to 'not given')."""
    p = argparse.ArgumentParser(
        prog="hgo-server",
        description="HGO parameter server (Boubouh et al., SRDS 2022): asyncio gRPC, robust aggregation.",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML file with the same keys as the flags (flags override it)",
    )
    forms.add_arguments(p, ServerConfig)
    return p


def load_toml(path: str | Path) -> dict[str, Any]:
    """Typed settings from a TOML file: keys with dashes or underscores; unknown keys are an error.

    A ``[server]`` table is read when present (so one file can hold several programs'
    settings); otherwise the top level.
    """
    table = forms.read_toml_table(path, table="server")
    where = f"--config {str(path)!r}: "
    return forms.coerce(ServerConfig, table, where=where, flags=False)


def parse_args(argv: Sequence[str] | None = None, *, base: ServerConfig | None = None) -> ServerConfig:
    """Defaults (or ``base``'s settings), then ``--config FILE``, then flags; resolved and validated.

    Raises ConfigError (never SystemExit) for bad values; argparse itself still exits
    on unknown flags and ``--help``.
    """
    ns = build_parser().parse_args(argv)
    settings: dict[str, Any] = {} if base is None else forms.coerce(ServerConfig, forms.to_mapping(base))
    config_file = getattr(ns, "config", None)
    if config_file is not None:
        settings.update(load_toml(config_file))
    settings.update(forms.coerce(ServerConfig, forms.from_namespace(ns, ServerConfig)))
    return resolve(ServerConfig(**settings))


def from_mapping(settings: Mapping[str, Any]) -> ServerConfig:
    """A resolved config from ``{key: value}`` (keys with dashes or underscores, values as in TOML).

    For programs that start servers in-process (tests, launchers): same coercion,
    same errors as the flags.
    """
    return resolve(ServerConfig(**forms.coerce(ServerConfig, dict(settings))))


def to_toml(cfg: ServerConfig) -> str:
    """``cfg`` as a TOML ``--config`` file: every setting that differs from the default.

    ``load_toml`` reads it back to the same config. The token is never written: pass it
    in ``$HGO_TOKEN`` or a token file.
    """
    return forms.to_toml(forms.to_mapping(cfg), header="hgo-server --config file (hgo_server.config.to_toml)")


def resolve(cfg: ServerConfig) -> ServerConfig:
    """Check every declared range and cross-setting rule, fill the dependent defaults."""
    forms.check(cfg)
    q = cfg.q_for()
    cfg = cfg.replace(q=q)
    RunSpec.checked(cfg)
    v = cfg.quorum_for(q)
    min_workers = q if cfg.min_workers is None else cfg.min_workers
    num_shards = min_workers if cfg.num_shards is None else cfg.num_shards
    # A chunk message carries 4 bytes per value plus a few dozen bytes of framing.
    max_values = max_vector_values(cfg.max_message_mb * 2**20)
    if not 1 <= cfg.max_chunk_values <= max_values:
        raise ConfigError(
            f"--max-chunk-values must be in [1, {max_values}] (fits --max-message-mb {cfg.max_message_mb}), "
            f"got {cfg.max_chunk_values}"
        )
    if cfg.export_every and cfg.export is None:
        raise ConfigError(f"--export-every {cfg.export_every} needs --export FILE to write to")
    if cfg.resume and not cfg.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir DIR to resume from")
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
    _check_dataless(cfg)
    if cfg.dataset == NO_DATASET:
        num_shards = 1  # nothing to split: every worker brings its own data
    return cfg.replace(v=Quorum.fixed(v), min_workers=min_workers, num_shards=num_shards)


def _check_dataless(cfg: ServerConfig) -> None:
    """``--dataset none`` needs the model's shape; the shape flags need ``--dataset none``."""
    if cfg.dataset != NO_DATASET:
        given = [f"--{n.replace('_', '-')}" for n in ("features", "classes", "test_data") if getattr(cfg, n)]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for a server without training data (--dataset none), "
                f"got --dataset {cfg.dataset!r}"
            )
        return
    if cfg.features is None or cfg.model is None:
        raise ConfigError(
            "--dataset none (workers train on their own data) needs the model's shape: --model NAME and "
            f"--features N (and --classes K for a classification model), got --model {cfg.model!r} "
            f"--features {cfg.features!r}"
        )
    if cfg.test_data_format not in ("auto", "csv", "libsvm", "idx", "cifar"):
        raise ConfigError(
            f"--test-data-format must be one of auto, csv, libsvm, idx, cifar, got {cfg.test_data_format!r}"
        )
    if cfg.test_scaling not in ("auto", "standardize", "none"):
        raise ConfigError(f"--test-scaling must be one of auto, standardize, none, got {cfg.test_scaling!r}")


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
    if cfg.test_data is not None and not Path(cfg.test_data).exists():
        raise ConfigError(f"--test-data: {cfg.test_data!r} does not exist")
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
        "--token"
        if cfg.token is not None
        else f"--token-file {cfg.token_file!r}"
        if cfg.token_file is not None
        else f"${credentials.TOKEN_ENV}"
    )
    try:
        token = credentials.resolve_token(cfg.token, cfg.token_file, env)
        if token is not None:
            credentials.check_token(token, source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg.replace(token=token)
