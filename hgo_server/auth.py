"""Worker authentication and transport security for the HGO server (docs/design.md §4).

Threat model: the server is trusted; workers authenticate to join, and an unauthenticated
client gets nothing and changes nothing. An authenticated worker may still be Byzantine
(the paper's model, Boubouh et al., SRDS 2022, §III) — that is the aggregation rule's
business, not this module's.

Two independent layers:

* **Bearer tokens** in call metadata (``authorization: Bearer <token>``), checked by
  :class:`AuthInterceptor` before any handler runs and before any request message is
  read. Tokens come from ``--token`` (one shared secret; identity ``"shared"``) and/or
  ``--tokens-file`` (one ``worker-id token`` pair per line; the worker id becomes the
  identity). Comparison uses :func:`hmac.compare_digest` against every configured token, so
  the time taken does not reveal how much of a guess was right nor which entry matched.
* **TLS** (:func:`server_credentials`; the client side is ``hgo_common.net.credentials``):
  server-authenticated TLS, or mutual TLS when the server is given a CA to check client certificates against.
  Tokens travel in metadata, so without TLS they cross the network in clear text: use both
  outside a trusted network.

How the servicer learns who is calling
--------------------------------------
The interceptor stores the identity in a :mod:`contextvars` variable. grpc.aio runs the
interceptors and the final handler in one ``contextvars.Context`` per call (documented on
``grpc.aio.ServerInterceptor.intercept_service``), so inside a handler
:func:`current_identity` returns the caller's identity (``None`` when the server runs
without tokens). Only a worker's *identity* comes from here; which *session* a message
belongs to is still checked by the servicer (``GradientChunk.session_id``), so one
authenticated worker cannot act for another's session.

A rejected call is answered ``UNAUTHENTICATED`` from a gate around the real handler
(``hgo_server.guard.around``) before that handler runs and before any request message is
read: every method is served with request streaming (``guard.streaming_request``), so not
even a unary request's body is buffered for an unauthenticated caller. The optional
``on_reject`` callback (e.g. incrementing ``hgo_rejected_messages_total{reason="unauthenticated"}``)
is the only side effect, and the log line for refused calls is rate-limited (one per 10 s,
with the number held back). Failed guesses are rate-limited per peer host
(:data:`FAIL_BURST`, :data:`FAIL_RATE`): beyond them a token is not even compared.

Identities and the unit of robustness
-------------------------------------
The guarantee "at most f Byzantine workers among the sampled" counts *identities*
(DESIGN.md §4). :func:`session_identity` decides the identity of a session: the
tokens-file identity of its token; otherwise, under mutual TLS, the client certificate's
identity (:func:`certificate_identity`: its common name and subject alternative names,
JSON-escaped; a certificate with neither is refused); otherwise None — anonymous (the shared
``--token``, or no authentication), for which f cannot be enforced.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from hgo_common.errors import HGOError, SpecError
from hgo_common.net.credentials import check_token, read_pem

from .guard import around, peer_host, streaming_request
from .logsafe import RateLimitedLog, escape
from .sessions import TokenBucket

__all__ = [
    "SHARED_IDENTITY",
    "AuthInterceptor",
    "TokenFileError",
    "TokenStore",
    "certificate_identity",
    "current_identity",
    "server_credentials",
    "session_identity",
]

log = logging.getLogger(__name__)
_refusals = RateLimitedLog(log, interval=10.0)

SHARED_IDENTITY = "shared"
"""The identity of a worker that presented the ``--token`` shared secret."""

_identity: contextvars.ContextVar[str | None] = contextvars.ContextVar("hgo_auth_identity", default=None)


def current_identity() -> str | None:
    """The authenticated identity of the call being handled (None: auth disabled)."""
    return _identity.get()


class NoUsableName(HGOError, ValueError):
    """A verified client certificate with neither a common name nor a reported SAN."""


def certificate_identity(context: Any) -> str | None:
    """The identity of the call's verified client certificate; None without one.

    ``x509:`` followed by the JSON object ``{"cn": CN or null, "san": [sorted SANs]}``:
    one identity per distinct (CN, SAN set), escaped by JSON, so the SANs ``[a, b]`` and
    ``["a,b"]`` differ, and two certificates with one CN but different SANs differ.
    gRPC reports a certificate's properties only when it verified it (mutual TLS).

    Raises
    ------
    NoUsableName
        The certificate has no common name and no SAN gRPC reports (for example only
        ``otherName`` SANs): it cannot be told apart from others like it.
    """
    try:
        props = context.auth_context() or {}
    except Exception:  # not an ssl call, or a context without auth data
        return None
    if not props.get("x509_pem_cert"):
        return None

    def text(v: Any) -> str:
        return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)

    cns = [text(v) for v in props.get("x509_common_name", ()) if text(v)]
    sans = sorted(text(v) for v in props.get("x509_subject_alternative_name", ()) if text(v))
    if not cns and not sans:
        subject = escape(text((props.get("x509_subject") or [b""])[0]), 200)
        raise NoUsableName(
            f"client certificate {subject!r} has no common name and no DNS/IP/URI/email SAN: "
            "it cannot be told apart from other certificates"
        )
    doc = {"cn": cns[0] if cns else None, "san": sans}
    return "x509:" + json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


def session_identity(context: Any) -> str | None:
    """The identity one session counts as (None: anonymous, f not enforceable); see the module doc."""
    ident = current_identity()
    if ident is not None and ident != SHARED_IDENTITY:
        return ident
    return certificate_identity(context)


class TokenFileError(SpecError):
    """A malformed tokens file; the message names ``file:line`` and the problem."""


@dataclass
class TokenStore:
    """The accepted tokens and the identity each one stands for.

    Attributes
    ----------
    entries : list of (identity, token bytes)
        One identity may hold several tokens (rotation); a token maps to one identity.
    """

    entries: list[tuple[str, bytes]] = field(default_factory=list)
    shards: dict[str, int] = field(default_factory=dict)  # explicit shard map (tokens file 3rd field)

    def identities(self) -> list[str]:
        """The per-worker identities in file order (first appearance), without ``shared``."""
        seen: dict[str, None] = {}
        for ident, _ in self.entries:
            if ident != SHARED_IDENTITY:
                seen.setdefault(ident, None)
        return list(seen)

    @property
    def has_shared(self) -> bool:
        return any(ident == SHARED_IDENTITY for ident, _ in self.entries)

    @classmethod
    def from_options(cls, token: str | None, tokens_file: Path | str | None) -> TokenStore | None:
        """Build the store from ``--token`` and ``--tokens-file``; None when neither is given.

        Raises
        ------
        ValueError
            Empty shared token. :class:`TokenFileError` for a bad tokens file (naming
            ``file:line``); OSError when the file cannot be read.
        """
        if token is None and tokens_file is None:
            return None
        store = cls()
        if token is not None:
            if not token.strip() or token != token.strip():
                raise ValueError("--token must be a non-empty string without surrounding whitespace")
            store.add(SHARED_IDENTITY, token)
        if tokens_file is not None:
            for identity, tok, shard in parse_tokens_entries(tokens_file):
                store.add(identity, tok)
                if shard is not None:
                    known = store.shards.setdefault(identity, shard)
                    if known != shard:
                        raise TokenFileError(
                            f"{tokens_file}: {identity!r} is given shard {known} and shard {shard}"
                        )
        return store

    def add(self, identity: str, token: str) -> None:
        """Accept ``token`` for ``identity``; ValueError when the token is already taken."""
        raw = token.encode("utf-8")
        for other, known in self.entries:
            if hmac.compare_digest(known, raw):
                raise ValueError(f"the token for {identity!r} is already the token of {other!r}")
        self.entries.append((identity, raw))

    def extend(self, pairs: Iterable[tuple[str, str]]) -> None:
        for identity, token in pairs:
            self.add(identity, token)

    def identify(self, token: str) -> str | None:
        """The identity holding ``token``, or None. Compares against every entry (no early exit)."""
        raw = token.encode("utf-8", errors="surrogateescape")
        found: str | None = None
        for identity, known in self.entries:
            if hmac.compare_digest(known, raw) and found is None:
                found = identity
        return found

    def __len__(self) -> int:
        return len(self.entries)


def parse_tokens_file(path: Path | str) -> list[tuple[str, str]]:
    """``(worker-id, token)`` pairs of a tokens file (see :func:`parse_tokens_entries`)."""
    return [(ident, tok) for ident, tok, _ in parse_tokens_entries(path)]


def parse_tokens_entries(path: Path | str) -> list[tuple[str, str, int | None]]:
    """``(worker-id, token, shard or None)`` entries of a tokens file.

    Format: one ``worker-id token [shard=N]`` entry per line, separated by whitespace;
    blank lines and lines whose first non-blank character is ``#`` are ignored. The
    optional ``shard=N`` pins the worker's data shard (otherwise it is the worker's rank
    in the file, modulo the number of shards). Anything else (one field, four fields, a
    trailing comment, a bad shard, a duplicate token, the reserved id ``shared``) raises
    :class:`TokenFileError` naming ``file:line``. A file readable by other users gets a
    logged warning.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    mode = os.stat(p).st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("tokens file %s is readable by other users (mode %o); chmod 600 it", p, mode & 0o777)
    pairs: list[tuple[str, str, int | None]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split()
        shard: int | None = None
        if len(fields) == 3 and fields[2].startswith("shard="):
            try:
                shard = int(fields[2][len("shard=") :])
            except ValueError:
                shard = -1
            if shard < 0:
                raise TokenFileError(
                    f"{p}:{lineno}: expected shard=N with N an integer >= 0, got {fields[2]!r}"
                )
            fields = fields[:2]
        if len(fields) != 2:
            hint = "; comments go on their own line" if any(x.startswith("#") for x in fields) else ""
            raise TokenFileError(
                f"{p}:{lineno}: expected 'worker-id token [shard=N]' (2 or 3 fields), "
                f"got {len(fields)} field(s){hint}"
            )
        identity, token = fields
        try:
            check_token(token, f"{p}:{lineno}")
        except ValueError as exc:
            raise TokenFileError(str(exc)) from None
        if identity == SHARED_IDENTITY:
            raise TokenFileError(f"{p}:{lineno}: worker id {SHARED_IDENTITY!r} is reserved for --token")
        if token in seen:
            raise TokenFileError(f"{p}:{lineno}: token already used on line {seen[token]}")
        seen[token] = lineno
        pairs.append((identity, token, shard))
    if not pairs:
        raise TokenFileError(f"{p}: no 'worker-id token' lines (an empty file would lock every worker out)")
    return pairs


def _token_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        scheme, _, token = text.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


FAIL_BURST = 20
"""Failed token guesses a peer may make at once; then :data:`FAIL_RATE` per second."""
FAIL_RATE = 1.0


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Reject calls without a valid ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    The check runs when the call starts, before its handler and before any request
    message is read (a unary-request handler is turned into a request-streaming one,
    ``hgo_server.guard.streaming_request``, so even its one request waits for the
    check). A peer host that failed more than :data:`FAIL_BURST` guesses, refilled at
    :data:`FAIL_RATE` per second, gets RESOURCE_EXHAUSTED without its token being
    compared at all (guessing is rate-limited per peer, not only counted).

    Parameters
    ----------
    store : TokenStore
        The accepted tokens (:meth:`reload` replaces them).
    on_reject : callable, optional
        Called with the reason (``"unauthenticated"``, ``"auth-rate"``) for every rejected
        call, e.g. to count it in ``hgo_rejected_messages_total``. Exceptions from it are
        logged, not raised.
    exempt : collection of str
        Full method names (``"/hgo.v1.HGO/Status"``) that need no token.
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        on_reject: Callable[[str], None] | None = None,
        exempt: Collection[str] = (),
    ) -> None:
        self.store = store
        self.on_reject = on_reject
        self.exempt = frozenset(exempt)
        self._failures: dict[str, TokenBucket] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        handler = streaming_request(handler)
        if method in self.exempt:
            return handler
        token = _token_from_metadata(handler_call_details.invocation_metadata)

        @contextlib.asynccontextmanager
        async def gate(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            await self._check(context, method, token)
            yield

        return around(handler, gate)

    async def _check(
        self, context: grpc.aio.ServicerContext[Any, Any], method: str, token: str | None
    ) -> None:
        """Set the call's identity, or abort the call (UNAUTHENTICATED; RESOURCE_EXHAUSTED
        over the guess rate)."""
        peer = peer_host(context)
        if token is not None:
            bucket = self._failures.get(peer)
            if bucket is not None and bucket.take(0.0) > 0:
                self._count("auth-rate")
                _refusals.log(logging.WARNING, "auth-rate", "refused %s from %s: too many failed tokens",
                              escape(method), escape(peer))  # fmt: skip
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many invalid tokens from this address; at most {FAIL_RATE:g} guesses/s",
                )
        identity = self.store.identify(token) if token is not None else None
        if identity is None:
            problem = "missing bearer token" if token is None else "invalid token"
            if token is not None:
                if peer not in self._failures and len(self._failures) > 100_000:
                    self._failures.clear()  # bounded whatever the number of addresses
                self._failures.setdefault(peer, TokenBucket(FAIL_RATE, FAIL_BURST)).take(1.0)
            # never log the token itself; one line per 10 s (the counter keeps the full count)
            _refusals.log(logging.INFO, "unauthenticated", "rejected %s: %s", escape(method), problem)
            self._count("unauthenticated")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"{problem}: send metadata 'authorization: Bearer <token>'"
            )
        # The gate runs in the handler's task: the handler sees this identity.
        _identity.set(identity)

    def _count(self, reason: str) -> None:
        if self.on_reject is not None:
            try:
                self.on_reject(reason)
            except Exception:  # a metrics bug must not turn a rejection into an accept
                log.exception("on_reject callback failed")


def server_credentials(
    cert: Path | str, key: Path | str, ca: Path | str | None = None
) -> grpc.ServerCredentials:
    """TLS credentials for the server; with ``ca``, mutual TLS (client certificates required).

    Parameters
    ----------
    cert, key : Path
        PEM certificate chain and private key of the server.
    ca : Path, optional
        PEM CA bundle that client certificates must chain to. When given, a client without
        a certificate signed by it cannot complete the handshake.
    """
    pair = (read_pem(key, "TLS key"), read_pem(cert, "TLS certificate"))
    root = read_pem(ca, "TLS CA") if ca is not None else None
    return grpc.ssl_server_credentials([pair], root_certificates=root, require_client_auth=root is not None)
