"""Admission and sessions of the parameter server (paper §3; DESIGN.md §4 on identities).

Who may join and as what: the identities the transport knows (tokens file or client
certificates) and each one's data shard; the join rate per identity and the session cap
per peer; Join validation, the one-session-per-identity rule (a newer Join replaces the
older session), Leave; heartbeats and the eviction of sessions that are silent or that
hold a sampling slot without ever delivering. Nothing here knows about gRPC: protocol
violations raise ``hgo_server.errors`` and the servicer maps them to status codes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import time

import numpy as np

from hgo_common import profiles
from hgo_common.datasets import local
from hgo_common.net.protocol import PROTOCOL_VERSION

from .config import ConfigError
from .errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
)
from .logsafe import RateLimitedLog, escape
from .messages import Beat, End, JoinRequest, ShardSlice, Stop, Welcome
from .sessions import SessionRecord, TokenBucket
from .setup import shard_slices
from .state import Collection, Phase, ServerState

log = logging.getLogger("hgo.server")
_limited = RateLimitedLog(log, interval=10.0)
JOIN_BURST = 5  # Joins an identity may make at once before --join-rate applies

KNOWN_PROFILES = frozenset({*profiles.PROFILES, "custom"})
HEARTBEAT_BATCH = 200  # sessions beaten per loop turn (see Admission.heartbeats)
PENDING_PER_IDENTITY = 4
"""Streams one identity may hold open before their Join (a reconnecting worker needs 1-2)."""
PENDING_PER_PEER = 256
"""Anonymous streams one peer address may hold open before their Join."""


class Admission(ServerState):
    """Identities, sessions and heartbeats (a part of :class:`hgo_server.server.Server`)."""

    # ------------------------------------------------------------------ identities

    def _init_identities(self) -> None:
        self.by_identity: dict[str, SessionRecord] = {}
        self.known_identities: dict[str, int] = {}  # identity -> rank in the tokens file
        self.shard_map: dict[str, int] = {}
        self.f_enforceable = False
        self._join_buckets: dict[str, TokenBucket] = {}
        self._peer_sessions: dict[str, int] = {}
        self._pending: dict[str, int] = {}  # open pre-Join streams per identity or anonymous peer
        self.session_msg_rate = float(self.cfg.session_msg_rate)
        mb = self.cfg.session_byte_rate_mb
        if mb is None:
            # A worker sends at most one gradient (4d bytes) per round; allow two per shortest
            # round (10 ms or more) plus 1 MiB of everything else. With early close a round
            # ends as soon as every sampled worker delivered, however long tau is, so the
            # shortest round is then 10 ms (a long tau must not throttle fast honest workers).
            tau = self.cfg.tau_min if self.cfg.tau_auto else self.cfg.tau_ms
            if self.cfg.early_close or not math.isfinite(tau):
                tau = 10.0
            per_s = 1000.0 / max(10.0, tau)
            self.session_byte_rate = 2 * 4 * self.d * per_s + 2**20
        else:
            self.session_byte_rate = mb * 2**20

    def set_identities(
        self, identities: list[str], shard_map: dict[str, int] | None = None, *, enforceable: bool
    ) -> None:
        """The known per-worker identities (tokens file order) and whether f is enforceable.

        Called by the transport before serving. A known identity's shard is its explicit
        ``shard_map`` entry, else its rank modulo the number of shards; an identity not
        known in advance (a client certificate) gets a stable hash of its name.
        """
        n = self.spec.num_shards
        self.known_identities = {ident: i for i, ident in enumerate(identities)}
        self.shard_map = dict(shard_map or {})
        for ident, shard in self.shard_map.items():
            if not 0 <= shard < n:
                raise ConfigError(f"--tokens-file: {ident!r} has shard={shard}, outside [0, {n}) shards")
        self.f_enforceable = bool(enforceable)

    def revoke(self, identities: set[str], why: str) -> int:
        """End the sessions of ``identities`` with PERMISSION_DENIED (reason ``revoked``);
        returns how many were ended. Used when a tokens-file reload removes an identity."""
        ended = 0
        for ident in sorted(identities):
            sess = self.by_identity.get(ident)
            if sess is not None:
                self.reject("revoked")
                self.leave(sess, "revoked", PermissionDenied("revoked", f"identity {ident!r} {why}"))
                ended += 1
        return ended

    def identity_shard(self, identity: str) -> int:
        """The data shard of ``identity``: a stable function of it (never of who else joined)."""
        n = self.spec.num_shards
        if identity in self.shard_map:
            return self.shard_map[identity]
        if identity in self.known_identities:
            return self.known_identities[identity] % n
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).digest()
        return int.from_bytes(digest[:8], "big") % n

    def _admit(self, identity: str | None, peer: str) -> None:
        """Join rate per identity and the per-peer session cap; ResourceExhausted when over."""
        if identity is not None and self.cfg.join_rate > 0:
            bucket = self._join_buckets.get(identity)
            if bucket is None:
                if len(self._join_buckets) > 100_000:  # bounded even with an unbounded CA
                    self._join_buckets.clear()
                bucket = self._join_buckets[identity] = TokenBucket(
                    self.cfg.join_rate, max(JOIN_BURST, self.cfg.join_rate)
                )
            if not bucket.allow():
                self.reject("join-rate")
                raise ResourceExhausted(
                    "join-rate",
                    f"identity {identity!r} joins faster than --join-rate {self.cfg.join_rate:g}/s",
                )
        # The per-address cap counts anonymous sessions only: an identity holds one session
        # whatever its address, and many identities may share one address (NAT).
        cap = self.cfg.max_sessions_per_peer
        if cap and peer and identity is None and self._peer_sessions.get(peer, 0) >= cap:
            self.reject("peer-cap")
            raise ResourceExhausted(
                "peer-cap", f"peer {peer} already holds {cap} sessions (--max-sessions-per-peer)"
            )

    # ------------------------------------------------------------------ sessions

    def pending_open(self, identity: str | None, peer: str) -> str:
        """A stream opened and waits for its Join: count it against its identity (or, anonymous,
        its peer address); ResourceExhausted over :data:`PENDING_PER_IDENTITY` /
        :data:`PENDING_PER_PEER`. Returns the key to give :meth:`pending_close`.

        Before its Join a stream is nothing but cost (a task, buffers, a --join-timeout
        wait); without this count one identity opened 30,000 of them.
        """
        key, cap = (f"id:{identity}", PENDING_PER_IDENTITY) if identity is not None else (
            f"peer:{peer}", PENDING_PER_PEER)  # fmt: skip
        held = self._pending.get(key, 0)
        if held >= cap:
            self.reject("pre-join-cap")
            who = f"identity {identity!r}" if identity is not None else f"peer {peer}"
            raise ResourceExhausted(
                "pre-join-cap", f"{who} already holds {cap} streams that have not sent their Join"
            )
        self._pending[key] = held + 1
        return key

    def pending_close(self, key: str) -> None:
        """The stream counted by :meth:`pending_open` sent its Join or ended."""
        left = self._pending.get(key, 1) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def join(self, req: JoinRequest, identity: str | None = None, peer: str = "") -> SessionRecord:
        """Validate a Join and open a session; its outbox already holds Welcome (+ shard).

        ``identity`` None means anonymous (shared token or no auth): the session counts on
        its own. Otherwise the identity holds at most one active session: a new Join
        replaces the old one (ended with ABORTED, as a reconnect would leave it), and the
        shard is :meth:`identity_shard`. Raises InvalidArgument naming the bad field,
        ResourceExhausted over the join rate or the per-peer cap.
        """
        if req.protocol_version != PROTOCOL_VERSION:
            self.reject("bad-join")
            raise InvalidArgument(
                "bad-join", f"protocol_version must be {PROTOCOL_VERSION}, got {req.protocol_version}"
            )
        if req.profile not in KNOWN_PROFILES:
            self.reject("bad-join")
            raise InvalidArgument(
                "bad-join",
                f"profile must be one of {sorted(KNOWN_PROFILES)}, got {escape(req.profile, 40)!r}",
            )
        if not (math.isfinite(req.rate) and req.rate >= 0):
            self.reject("bad-join")
            raise InvalidArgument("bad-join", f"rate must be a finite number >= 0, got {req.rate}")
        if req.batch_size < 1:
            self.reject("bad-join")
            raise InvalidArgument("bad-join", f"batch_size must be >= 1, got {req.batch_size}")
        self._check_local_data(req)
        self._admit(identity, peer)
        if identity is not None:
            old = self.by_identity.get(identity)
            if old is not None:
                self.reject("replaced")
                _limited.log(
                    logging.WARNING, "replaced", "identity %s joined again: session of worker %d replaced",
                    escape(identity), old.worker_id,
                )  # fmt: skip
                self.leave(
                    old, "replaced",
                    Aborted("replaced", f"a newer session of identity {identity!r} replaced this one"),
                )  # fmt: skip
        worker_id = self._next_worker_id
        self._next_worker_id += 1
        shard = self._pick_shard() if identity is None else self.identity_shard(identity)
        sess = SessionRecord(
            session_id=secrets.token_hex(16),
            worker_id=worker_id,
            name=req.name[:128],
            profile=req.profile,
            rate=float(req.rate),
            batch_size=int(req.batch_size),
            byzantine=bool(req.byzantine),
            shard_index=shard,
            identity=identity,
            last_seen=time.monotonic(),
            peer=peer,
            first_round=self.round,
        )
        sess.send(Welcome(sess.session_id, worker_id, self.spec, shard, int(self.cfg.heartbeat_ms),
                          eval_fraction=self.eval_share))  # fmt: skip
        if req.wants_shard:
            for part in self._shard_parts(shard):
                sess.send(part)
            sess.shard_rows = self._shard_parts(shard)[0].total_rows
        if self.phase is Phase.DONE:
            sess.send(Stop("done"))
        elif self.stopping:
            sess.send(Stop("shutdown"))
        else:
            self.sessions[sess.session_id] = sess
            if identity is not None:
                self.by_identity[identity] = sess
            elif peer:
                self._peer_sessions[peer] = self._peer_sessions.get(peer, 0) + 1
            self._shard_holders[shard] += 1
            self.metrics.active_sessions.labels(profile=sess.profile).inc()
            self._changed.set()
            if sess.byzantine:
                self._declared_byzantine()
        log.info(
            # %r escapes control characters in the peer's name (repr quotes non-printables)
            "join worker=%d name=%r profile=%s rate=%g batch=%d shard=%s declared-byzantine=%s identity=%s",
            worker_id, sess.name, sess.profile, sess.rate, sess.batch_size,
            shard if req.local_data is None else f"own({req.local_data.examples} rows)", sess.byzantine,
            escape(identity),
        )  # fmt: skip
        return sess

    def _check_local_data(self, req: JoinRequest) -> None:
        """A worker's own data (``Join.local_data``, hgo-worker --data) against the run's model.

        FailedPrecondition (FAILED_PRECONDITION, details starting ``datasets.local.REFUSED``,
        so the worker exits 2: the fix is on the device) naming the worker's value and the
        server's; the same for a worker without data joining a server that has none to send.
        """
        data = req.local_data
        if data is None:
            if not self.setup.training_data:
                self.reject("local-data")
                _limited.log(
                    logging.WARNING, "local-data:none",
                    "join refused (name=%r): no --data, and this server has no training data", req.name[:128],
                )  # fmt: skip
                raise FailedPrecondition(
                    "local-data",
                    f"{local.REFUSED}this server has no training data (--dataset none) and the worker "
                    "brought none: start it with --data PATH (its own files)",
                )
            return
        if req.wants_shard:
            self.reject("bad-join")
            raise InvalidArgument(
                "bad-join", "a Join with local_data (the worker's own data) must not ask for a shard"
            )
        why = local.fit_error(data, self.spec.n_features, self.spec.n_classes, str(self.setup.model.task))
        if why is not None:
            self.reject("local-data")
            # one line per kind of mismatch per 10 s: a flood of bad joins cannot flood the log
            kind = next((k for k in ("feature", "real-valued", "labels", "non-finite") if k in why), "other")
            _limited.log(
                logging.WARNING, f"local-data:{kind}", "join refused (name=%r): %s", req.name[:128], why
            )  # fmt: skip
            raise FailedPrecondition("local-data", f"{local.REFUSED}{why}")

    def _declared_byzantine(self) -> None:
        """Warn when more active sessions declare themselves Byzantine (the lab's attackers,
        ``Join.byzantine``) than ``--f`` tolerates: the rule's guarantee no longer holds."""
        n = sum(1 for s in self.sessions.values() if s.byzantine)
        if n > self.cfg.f:
            _limited.log(
                logging.WARNING, "byzantine-over-f",
                "%d active sessions declare themselves Byzantine but --f is %d: the rule (%s) tolerates "
                "at most %d; expect the model to suffer", n, self.cfg.f, self.cfg.rule, self.cfg.f,
            )  # fmt: skip

    def _pick_shard(self) -> int:
        """For an anonymous session: the shard held by the fewest active sessions (lowest index on ties).

        With workers joining one by one this gives the i-th worker shard i, then
        round-robin; a worker that replaces a dropped one inherits its free shard. (A
        Sybil can steer this; with identities the shard is :meth:`identity_shard`.)
        """
        return int(np.argmin(self._shard_holders))

    def _shard_parts(self, shard: int) -> list[ShardSlice]:
        """Shard ``shard`` as ShardSlices, encoded once and cached."""
        if shard not in self._shard_cache:
            ds = self.setup.dataset
            idx = self.setup.shards[shard]
            self._shard_cache[shard] = shard_slices(ds.X_train[idx], ds.y_train[idx])
        return self._shard_cache[shard]

    def leave(self, sess: SessionRecord, reason: str = "left", error: ProtocolError | None = None) -> None:
        """End a session (stream ended, Leave, heartbeat timeout, fatal rejection); idempotent.

        A sampled worker's prefix stays what it delivered before it left.
        """
        if not sess.active:
            return
        sess.active = False
        if self.sessions.pop(sess.session_id, None) is not None:
            self._shard_holders[sess.shard_index] -= 1
            self.metrics.active_sessions.labels(profile=sess.profile).dec()
            if sess.identity is not None and self.by_identity.get(sess.identity) is sess:
                del self.by_identity[sess.identity]
            if sess.peer and sess.identity is None:
                left = self._peer_sessions.get(sess.peer, 1) - 1
                if left > 0:
                    self._peer_sessions[sess.peer] = left
                else:
                    self._peer_sessions.pop(sess.peer, None)
        if self.collection is Collection.OPEN and sess.slot is not None:
            self.collector.drop_slot(sess.slot)
            self._maybe_wake()
        sess.end_error = error
        sess.send(End(error))
        sess.ended.set()
        self._changed.set()
        log.info("leave worker=%d reason=%s", sess.worker_id, escape(reason))

    def on_heartbeat(self, sess: SessionRecord) -> None:
        """A Heartbeat from ``sess``: it is alive."""
        sess.last_seen = time.monotonic()

    def sweep(self, batch: list[SessionRecord] | None = None) -> None:
        """Send heartbeats; drop sessions silent for more than 3 intervals.

        ``batch``: only these sessions (those that left meanwhile are skipped); default all.
        """
        now = time.monotonic()
        limit = 3 * self.cfg.heartbeat_ms / 1000.0
        beat = Beat(time.time_ns())
        for sess in list(self.sessions.values()) if batch is None else batch:
            if self.sessions.get(sess.session_id) is not sess:
                continue
            if now - sess.last_seen > limit:
                self.reject("heartbeat-timeout")
                self.leave(
                    sess,
                    "heartbeat-timeout",
                    DeadlineExceeded("heartbeat-timeout", f"no message for {now - sess.last_seen:.1f} s"),
                )
            else:
                sess.send(beat)

    def account_round(self, sampled: list[SessionRecord], prefixes: np.ndarray) -> None:
        """After a round: count sampled sessions that sent nothing; evict the persistently silent.

        A session sampled into ``--evict-after`` rounds in a row without delivering one
        value, and silent for at least 3 heartbeat intervals since the first of them, is
        ended with DEADLINE_EXCEEDED (reason ``evicted``): it holds a sampling slot and
        the quorum hostage (a stalled process, a reader that never reads its tasks).
        """
        n = self.cfg.evict_after
        now = time.monotonic()
        grace = 3 * self.cfg.heartbeat_ms / 1000.0
        for sess, p in zip(sampled, prefixes, strict=True):
            if int(p) > 0:
                sess.silent_rounds = 0
                continue
            if sess.silent_rounds == 0:
                sess.silent_since = now
            sess.silent_rounds += 1
            if n and sess.active and sess.silent_rounds >= n and now - sess.silent_since >= grace:
                self.reject("evicted")
                self.leave(
                    sess, "evicted",
                    DeadlineExceeded(
                        "evicted", f"sampled into {sess.silent_rounds} rounds in a row, no value sent"
                    ),
                )  # fmt: skip

    async def heartbeats(self) -> None:
        """Run :meth:`sweep` every heartbeat interval until cancelled.

        With more than :data:`HEARTBEAT_BATCH` sessions the interval is cut into equal
        slices and each slice beats one batch: a beat wakes every session's stream writer
        at once, and asyncio runs all ready callbacks before it looks at its timers, so
        4,000 beats in one sweep held the round's deadline timer for hundreds of ms
        (bench/bench_sessions.py, docs/benchmarks.md).
        """
        period = self.cfg.heartbeat_ms / 1000.0
        while True:
            sessions = list(self.sessions.values())
            batches = [sessions[i : i + HEARTBEAT_BATCH] for i in range(0, len(sessions), HEARTBEAT_BATCH)]
            for batch in batches or [[]]:
                await asyncio.sleep(period / max(1, len(batches)))
                self.sweep(batch)
