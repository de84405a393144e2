"""What a client presents to the server: bearer-token metadata and TLS channel credentials.

The server side (the interceptor that checks tokens, server credentials) lives in
``hgo_server.auth``; both read PEM files through :func:`read_pem`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import grpc

__all__ = [
    "MIN_TOKEN_BYTES",
    "PLACEHOLDER_TOKENS",
    "TOKEN_ENV",
    "bearer_metadata",
    "channel_credentials",
    "check_token",
    "read_pem",
    "read_token",
    "resolve_token",
]

TOKEN_ENV = "HGO_TOKEN"
MIN_TOKEN_BYTES = 16
PLACEHOLDER_TOKENS = frozenset({"change-me-before-use", "hgo-dev-token"})
"""Tokens committed to the repository (k8s secret placeholder, old compose default): refused."""
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def read_token(path: Path | str, flag: str = "--token-file") -> str:
    """The token in ``path``: the file's text without surrounding whitespace (a trailing newline).

    ValueError naming ``flag`` and the path when the file cannot be read or holds no token,
    or holds more than one line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{flag}: cannot read {str(p)!r}: {why}") from None
    token = text.strip()
    if not token:
        raise ValueError(f"{flag}: {str(p)!r} is empty; expected one token (make one with {MAKE_TOKEN})")
    if any(c.isspace() for c in token):
        raise ValueError(f"{flag}: {str(p)!r} holds more than one word; expected one token on one line")
    return token


def resolve_token(
    token: str | None, token_file: Path | str | None, env: Mapping[str, str] | None = None
) -> str | None:
    """The bearer token from ``--token``, else ``--token-file``, else ``$HGO_TOKEN`` (None: none).

    ``--token`` and ``--token-file`` together are refused (ValueError): which one wins would
    be a guess. An empty ``$HGO_TOKEN`` counts as unset.
    """
    if token is not None and token_file is not None:
        raise ValueError("--token and --token-file are two sources of one token; give one of them")
    if token is not None:
        return token
    if token_file is not None:
        return read_token(token_file)
    value = (os.environ if env is None else env).get(TOKEN_ENV, "").strip()
    return value or None


def check_token(token: str, source: str = "--token") -> None:
    """ValueError when ``token`` is a committed placeholder or shorter than 16 bytes.

    The message names the source and says how to make a good one.
    """
    if token in PLACEHOLDER_TOKENS:
        raise ValueError(
            f"{source}: {token!r} is the placeholder committed to the repository, known to everyone; "
            f"make a real token with {MAKE_TOKEN}"
        )
    size = len(token.encode("utf-8"))
    if size < MIN_TOKEN_BYTES:
        raise ValueError(
            f"{source}: the token is {size} bytes, shorter than the {MIN_TOKEN_BYTES} bytes required; "
            f"make one with {MAKE_TOKEN}"
        )


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
