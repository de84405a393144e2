"""Bad input at the edge of every console script: a clear message and a non-zero exit, no traceback.

Each case runs the real console script (hgo-server, hgo-worker, hgo-run, hgo-plot,
``python -m hgo_server.health``) as a subprocess and checks the exit status and that
stderr (or stdout, for the health check) names the offending value and what was expected.
All cases are started at once by a module fixture (they only parse flags and exit, none
binds a port or trains), then checked one by one, so the file stays well under a minute
on a loaded 2-core machine.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import console


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]  # console script name first; "{tmp}" and "{busy}" are filled in
    needles: tuple[str, ...]  # each must appear in the output
    code: int = 2


def C(case_id: str, command: str, *needles: str) -> Case:
    """One row: ``command`` split on spaces (no argument here contains one)."""
    return Case(case_id, command.split(), needles)


def _health() -> list[str]:
    return [sys.executable, "-m", "hgo_server.health"]


W = "hgo-worker --server 127.0.0.1:1"
CASES = [
    # ---------------------------------------------------------------- hgo-server
    C("server-q-zero", "hgo-server --q 0", "--q", ">= 1", "got 0"),
    C("server-q-text", "hgo-server --q ten", "--q", "integer", "'ten'"),
    C("server-tau-negative", "hgo-server --tau -5", "--tau", "'-5'", "milliseconds"),
    C("server-tau-unit", "hgo-server --tau 5h", "--tau", "'5h'", "2s"),
    C("server-rule", "hgo-server --rule mediam", "'mediam'", "median", "krum"),
    C("server-model", "hgo-server --model resnet", "--model", "'resnet'", "logistic"),
    C("server-dataset", "hgo-server --dataset imagenet", "'imagenet'", "digits"),
    C("server-partition", "hgo-server --partition shards:3", "'shards:3'", "dirichlet:ALPHA"),
    C("server-port", "hgo-server --port 70000", "--port", "[0, 65535]", "70000"),
    C("server-unknown-flag", "hgo-server --quorom 3", "unrecognized arguments", "--quorom"),
    C(
        "server-config-missing",
        "hgo-server --config {tmp}/nope.toml",
        "--config",
        "nope.toml",
        "does not exist",
    ),
    C("server-config-directory", "hgo-server --config {tmp}", "--config", "cannot read"),
    C(
        "server-config-type",
        "hgo-server --config {tmp}/type.toml",
        "type.toml",
        "key 'q'",
        "integer",
        "'ten'",
    ),
    C("server-config-key", "hgo-server --config {tmp}/key.toml", "unknown keys", "quorom"),
    C(
        "server-tokens-file",
        "hgo-server --tokens-file {tmp}/tokens.txt",
        "--tokens-file",
        "tokens.txt",
        "does not exist",
    ),
    C(
        "server-token-short",
        "hgo-server --token abc",
        "--token",
        "3 bytes",
        "16 bytes",
        "secrets.token_urlsafe",
    ),
    C(
        "server-token-placeholder",
        "hgo-server --token-file {tmp}/placeholder-token",
        "--token-file",
        "placeholder",
        "secrets.token_urlsafe",
    ),
    C(
        "server-token-file-missing",
        "hgo-server --token-file {tmp}/no-token",
        "--token-file",
        "no-token",
        "does not exist",
    ),
    C(
        "server-token-file-empty",
        "hgo-server --token-file {tmp}/empty.jsonl",
        "--token-file",
        "empty",
        "secrets.token_urlsafe",
    ),
    C(
        "server-token-two-sources",
        "hgo-server --token abcdefghijklmnopq --token-file {tmp}/placeholder-token",
        "--token",
        "--token-file",
        "one of them",
    ),
    C("server-tls-pair", "hgo-server --tls-cert {tmp}/a.pem", "--tls-cert", "--tls-key"),
    C(
        "server-tls-missing",
        "hgo-server --tls-cert {tmp}/c.pem --tls-key {tmp}/k.pem",
        "--tls-cert",
        "c.pem",
        "does not exist",
    ),
    C(
        "server-log-under-file",
        "hgo-server --log {tmp}/keep.txt/rounds.jsonl",
        "--log",
        "keep.txt",
        "not a directory",
    ),
    C(
        "server-metrics-port-busy",
        "hgo-server --port 0 --metrics-port {busy}",
        "--metrics-port",
        "{busy}",
        "in use",
    ),
    # ---------------------------------------------------------------- hgo-worker
    C("worker-no-port", "hgo-worker --server 127.0.0.1", "--server", "HOST:PORT", "'127.0.0.1'"),
    C("worker-port-range", "hgo-worker --server 127.0.0.1:70000", "1..65535", "70000"),
    C("worker-tls-name-plaintext", f"{W} --tls-server-name hgo-server", "--tls-server-name", "needs TLS"),
    C("worker-rate-negative", f"{W} --rate -1", "--rate", ">= 0", "'-1'"),
    C("worker-rate-text", f"{W} --rate fast", "--rate", "'fast'"),
    C("worker-profile", f"{W} --profile turbo", "--profile", "'turbo'", "weak"),
    C("worker-attack", f"{W} --byzantine evil", "'evil'", "foe", "alie"),
    C("worker-attack-param", f"{W} --byzantine foe --attack-param epsilon=3", "'epsilon'", "eps"),
    C("worker-batch-size", f"{W} --batch-size 0", "--batch-size", ">= 1", "0"),
    C("worker-seed", f"{W} --seed -1", "--seed", "-1"),
    C("worker-tls-ca-missing", f"{W} --tls-ca {{tmp}}/ca.pem", "--tls-ca", "ca.pem", "does not exist"),
    C("worker-shard", f"{W} --shard 7/2", "--shard", "'7/2'"),
    # ---------------------------------------------------------------- hgo-run
    C("run-workers", "hgo-run --workers 0 --out {tmp}/run", "--workers", ">= 1", "got 0"),
    C("run-mix", "hgo-run --mix C_huge --out {tmp}/run", "'C_huge'", "C_min"),
    C("run-attack", "hgo-run --attackers 1 --attack evil --out {tmp}/run", "--attack", "'evil'", "foe"),
    C("run-rule", "hgo-run --rule mediam --out {tmp}/run", "--rule", "'mediam'", "median"),
    C("run-tau", "hgo-run --tau 5h --out {tmp}/run", "--tau", "'5h'"),
    C("run-timeout", "hgo-run --timeout 0 --out {tmp}/run", "--timeout", "> 0"),
    C("run-out-is-file", "hgo-run --out {tmp}/keep.txt", "--out", "keep.txt"),
    # A worker that cannot start ends the run at once (it used to leave the server waiting until --timeout).
    Case(
        "run-worker-fails",
        [
            "hgo-run",
            "--workers",
            "1",
            "--rounds",
            "2",
            "--hidden",
            "8",
            "--worker-arg=--bogus",
            "--timeout",
            "100",
            "--no-progress",
            "--out",
            "{tmp}/run2",
        ],
        ("worker-0 exited with code 2", "--bogus"),
        code=1,
    ),
    # ---------------------------------------------------------------- hgo-plot
    C("plot-empty", "hgo-plot {tmp}/empty.jsonl --out {tmp}/plots", "empty.jsonl", "no records"),
    C("plot-garbage", "hgo-plot {tmp}/garbage.jsonl --out {tmp}/plots", "garbage.jsonl", "JSON"),
    C("plot-binary", "hgo-plot {tmp}/binary.jsonl --out {tmp}/plots", "binary.jsonl", "UTF-8"),
    C("plot-missing", "hgo-plot {tmp}/missing.jsonl --out {tmp}/plots", "missing.jsonl", "No such file"),
    C("plot-out-is-file", "hgo-plot {tmp}/good.jsonl --out {tmp}/keep.txt", "--out", "keep.txt", "is a file"),
    C("plot-labels", "hgo-plot {tmp}/good.jsonl --label a --label b --out {tmp}/p", "2 labels", "1 logs"),
    # ---------------------------------------------------------------- health check
    C("health-no-port", "health --grpc 127.0.0.1", "--grpc", "HOST:PORT", "'127.0.0.1'"),
    C("health-port-range", "health --grpc 127.0.0.1:99999", "1..65535", "99999"),
    C("health-url", "health --http localhost:9101", "--http", "'localhost:9101'"),
    C("health-tls-ca", "health --grpc 127.0.0.1:1 --tls-ca {tmp}/ca.pem", "--tls-ca", "ca.pem"),
    C("health-timeout", "health --timeout 0", "--timeout", "> 0"),
]

KEEP_TEXT = "unrelated file: must survive every case\n"


@dataclass(frozen=True)
class Outcome:
    code: int
    output: str


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Outcome], Path, int]]:
    tmp = tmp_path_factory.mktemp("cli_errors")
    (tmp / "type.toml").write_text('q = "ten"\n')
    (tmp / "key.toml").write_text("quorom = 3\n")
    (tmp / "placeholder-token").write_text("change-me-before-use\n")
    (tmp / "keep.txt").write_text(KEEP_TEXT)
    (tmp / "empty.jsonl").write_text("")
    (tmp / "garbage.jsonl").write_text("not json\nstill not json\n{}\n")
    (tmp / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\xc3\x28\n")
    (tmp / "good.jsonl").write_text(
        '{"round":0,"t":0.1,"sampled":1,"responded":1,"block":5,"quorum":true,"workers":[],"accuracy":0.5}\n'
    )
    busy = socket.socket()  # a port held open for the "metrics port in use" case
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = str(busy.getsockname()[1])
    running: dict[str, subprocess.Popen[str]] = {}
    try:
        for case in CASES:
            args = [a.replace("{tmp}", str(tmp)).replace("{busy}", busy_port) for a in case.argv[1:]]
            prefix = _health() if case.argv[0] == "health" else console(case.argv[0])
            running[case.id] = subprocess.Popen(
                [*prefix, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True, cwd=tmp,
            )  # fmt: skip
        results: dict[str, Outcome] = {}
        for name, proc in running.items():
            out, _ = proc.communicate(timeout=120)
            results[name] = Outcome(proc.returncode, out)
        yield results, tmp, int(busy_port)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        busy.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_with_a_named_message(
    case: Case, outcomes: tuple[dict[str, Outcome], Path, int]
) -> None:
    results, _, busy = outcomes
    got = results[case.id]
    assert "Traceback" not in got.output, got.output
    assert got.code == case.code, f"exit {got.code}, expected {case.code}:\n{got.output}"
    for needle in case.needles:
        needle = needle.replace("{busy}", str(busy))
        assert needle in got.output, f"{needle!r} not in:\n{got.output}"


def test_nothing_stored_is_clobbered(outcomes: tuple[dict[str, Outcome], Path, int]) -> None:
    """The file given as --out (plot, run) or as a --log parent is untouched; no plots were written."""
    _, tmp, _ = outcomes
    assert (tmp / "keep.txt").read_text() == KEEP_TEXT
    assert not (tmp / "plots").exists()
    assert not (tmp / "p").exists()
