"""What a client presents to the server: bearer-token metadata and TLS channel credentials.

The server side (the interceptor that checks tokens, server credentials) lives in
``hgo_server.auth``; both read PEM files through :func:`read_pem`.
"""

from __future__ import annotations

from pathlib import Path

import grpc

__all__ = ["bearer_metadata", "channel_credentials", "read_pem"]


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (empty when ``token`` is None), for clients."""
    return () if token is None else (("authorization", f"Bearer {token}"),)


def read_pem(path: Path | str, what: str) -> bytes:
    """The bytes of a PEM file; ValueError naming ``what`` and the path when unreadable or not PEM."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise ValueError(f"{what} {p} is not PEM (no '-----BEGIN' line)")
    return data


def channel_credentials(
    ca: Path | str | None = None, cert: Path | str | None = None, key: Path | str | None = None
) -> grpc.ChannelCredentials:
    """TLS credentials for a worker's channel.

    Parameters
    ----------
    ca : Path, optional
        PEM CA bundle to verify the server with (None: the system roots).
    cert, key : Path, optional
        The worker's client certificate and key, for servers that require mutual TLS.
        Both or neither.
    """
    if (cert is None) != (key is None):
        raise ValueError(f"client certificate and key go together; got cert={cert!r}, key={key!r}")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "TLS CA") if ca is not None else None,
        private_key=read_pem(key, "TLS key") if key is not None else None,
        certificate_chain=read_pem(cert, "TLS certificate") if cert is not None else None,
    )
