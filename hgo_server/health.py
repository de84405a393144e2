"""Container health check: ``python -m hgo_server.health``.

Used by the Docker image's ``HEALTHCHECK`` and by the Kubernetes TLS overlay's exec probes
(the kubelet's native gRPC probe speaks plaintext only; the base manifests use that one;
docs/design.md §7).
Two checks, either or both:

* ``--grpc HOST:PORT`` (the default, ``127.0.0.1:$HGO_PORT`` or ``:50051``): the standard
  ``grpc.health.v1.Health/Check`` of ``--service`` (default ``""``, the whole server;
  ``hgo.v1.HGO`` is SERVING only while the server accepts workers, see
  ``hgo_server.health_service``). Healthy when the answer is SERVING. With ``--status``
  the server's own ``Status`` rpc is called instead (it needs the token; ``UNAUTHENTICATED``
  still counts as alive: the server answered) and its state and round are printed.
  Anything else — refused connection, deadline, NOT_SERVING, internal error — is unhealthy.
* ``--http URL``: GET a Prometheus endpoint (a worker's ``/metrics``); healthy on HTTP
  200 with at least one ``hgo_`` sample in the body.

The token comes from ``--token``, ``--token-file`` or ``$HGO_TOKEN`` (sent as
``authorization: Bearer``; the health service itself needs none);
with ``--tls-ca`` (or ``$HGO_TLS_CA``) the call uses TLS, verifying the server name given
by ``--tls-name`` (default ``server``; the Kubernetes TLS overlay passes ``hgo-server``), and
``--tls-cert``/``--tls-key`` present a client certificate to a mutual-TLS server.

Exit status 0 = healthy, 1 = unhealthy, 2 = bad usage; one line on stdout says why.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc

from hgo_common.net import credentials
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_common.net.protocol import SERVICE

DEFAULT_PORT = 50051


def check_grpc(
    target: str,
    *,
    timeout: float = 3.0,
    token: str | None = None,
    tls_ca: Path | None = None,
    tls_name: str | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    service: str = "",
    status: bool = False,
) -> tuple[bool, str]:
    """Health/Check ``service`` on ``target`` (or ``Status`` when ``status``); (healthy, why).

    ``tls_ca`` switches to TLS; ``tls_cert``/``tls_key`` add a client certificate (mutual TLS).
    """
    metadata = credentials.bearer_metadata(token or None)
    if tls_ca is not None:
        creds = credentials.channel_credentials(tls_ca, tls_cert, tls_key)
        options = [("grpc.ssl_target_name_override", tls_name)] if tls_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        if not status:
            return _check_health(channel, target, service, timeout, metadata)
        stub = hgo_pb2_grpc.HGOStub(channel)
        reply = stub.Status(hgo_pb2.StatusRequest(), timeout=timeout, metadata=metadata)
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return True, f"{target}: server answered UNAUTHENTICATED (alive; no valid token given)"
        detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        return False, f"{target}: Status failed with {code.name if code else 'error'}: {detail}"
    finally:
        channel.close()
    return True, (
        f"{target}: state={reply.state} round={reply.round} active_sessions={reply.active_sessions}"
    )


def _check_health(
    channel: grpc.Channel, target: str, service: str, timeout: float, metadata: Sequence[tuple[str, str]]
) -> tuple[bool, str]:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata
    )
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {service or '(server)'} {name}"


def check_http(url: str, *, timeout: float = 3.0) -> tuple[bool, str]:
    """GET a Prometheus text endpoint; healthy on 200 with an ``hgo_`` sample."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = int(resp.status)
            body = resp.read(1 << 20).decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url}: {exc}"
    if status != 200:
        return False, f"{url}: HTTP {status}"
    samples = sum(1 for line in body.splitlines() if line.startswith("hgo_"))
    if samples == 0:
        return False, f"{url}: HTTP 200 but no hgo_ metric in the body"
    return True, f"{url}: HTTP 200, {samples} hgo_ samples"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hgo_server.health", description="Health check for HGO containers (exit 0 = healthy)."
    )
    parser.add_argument(
        "--grpc",
        metavar="HOST:PORT",
        help=f"server address for the Status rpc (default 127.0.0.1:$HGO_PORT, else :{DEFAULT_PORT}; "
        "checked unless only --http is given)",
    )
    parser.add_argument(
        "--http", metavar="URL", help="metrics URL to GET (e.g. http://127.0.0.1:9101/metrics)"
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per check (default 3)")
    parser.add_argument(
        "--service",
        default="",
        help=f"grpc.health.v1 service to check: '' = the server (default), {SERVICE} = accepting workers",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="call the server's Status rpc instead of grpc.health.v1 (prints state and round; needs "
        "the token)",
    )
    parser.add_argument("--token", default=None, help="bearer token (default: $HGO_TOKEN)")
    parser.add_argument("--token-file", type=Path, default=None, help="read the bearer token from this file")
    parser.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="CA certificate (PEM); enables TLS (default: $HGO_TLS_CA, else plaintext)",
    )
    parser.add_argument("--tls-name", default="server", help="TLS server name to verify (default: server)")
    parser.add_argument("--tls-cert", type=Path, default=None, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, default=None, help="client key (mutual TLS)")
    return parser


def _check_target(target: str) -> str | None:
    """Why ``target`` is not HOST:PORT with a port in 1..65535 (None when it is)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"--grpc must be HOST:PORT with a port in 1..65535, got {target!r}"
    return None


def _check_files(parser: argparse.ArgumentParser, args: argparse.Namespace, tls_ca: Path | None) -> None:
    for flag, path in (("--tls-ca", tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is None:
            continue
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            parser.error(f"{flag}: cannot read {str(path)!r} ({exc.strerror or exc})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error(f"--timeout {args.timeout} must be > 0 seconds")
    if args.http and urllib.parse.urlsplit(args.http).scheme not in ("http", "https"):
        parser.error(f"--http must be an http:// or https:// URL, got {args.http!r}")
    checks: list[tuple[bool, str]] = []
    if args.http:
        checks.append(check_http(args.http, timeout=args.timeout))
    if args.grpc or not args.http:
        target = args.grpc or f"127.0.0.1:{os.environ.get('HGO_PORT', DEFAULT_PORT)}"
        bad = _check_target(target)
        if bad is not None:
            parser.error(bad if args.grpc else f"$HGO_PORT: {bad}")
        try:
            token = credentials.resolve_token(args.token, args.token_file)
        except ValueError as exc:
            parser.error(str(exc))
        ca_env = os.environ.get("HGO_TLS_CA")
        tls_ca = args.tls_ca if args.tls_ca is not None else (Path(ca_env) if ca_env else None)
        if (args.tls_cert is None) != (args.tls_key is None):
            parser.error("--tls-cert and --tls-key go together (mutual TLS)")
        _check_files(parser, args, tls_ca)
        checks.append(
            check_grpc(
                target,
                timeout=args.timeout,
                token=token,
                tls_ca=tls_ca,
                tls_name=args.tls_name,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
                service=args.service,
                status=args.status,
            )
        )
    for ok, why in checks:
        print(("healthy: " if ok else "unhealthy: ") + why, flush=True)
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
