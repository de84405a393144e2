"""The per-round log: one JSON object per line, written by the server and the simulator.

Schema (every record):

=============  ==========================================================================
key            meaning
=============  ==========================================================================
round          round index k (0-based)
t              seconds since training started (wall clock on the wire, virtual clock in
               the simulator) at the moment the round closed
tau_ms         the round deadline in ms (``null`` for tau = inf)
algorithm      "hgo" or "sgd"
sampled        number of workers sampled (q, or all active when fewer)
responded      number of sampled workers that delivered a non-empty prefix
block          b_v, the block size (0 when the round had no quorum)
quorum         whether the round updated the model
step_size      gamma_k used for the update (0 without quorum)
round_ms       wall (or virtual) duration of the round in ms
aggregate_ms   the server's close (b_v, the rule over the block, the update) in wall ms;
               0 in the simulator (its virtual clock charges the server nothing)
workers        one ``{"id", "profile", "prefix", "byzantine"}`` per sampled worker;
               ``prefix`` is the number of C_k positions received before the deadline
=============  ==========================================================================

On evaluation rounds, ``accuracy`` (classification) and/or ``loss`` on the test split.
The wire server adds ``rates`` (coordinates per ms: ``observed`` per profile, measured by
the server; ``self_reported``, the workers' RoundReports of the previous round) and, per
``workers`` entry, ``observed_rate`` and ``delivered_ms``; on federated evaluation rounds
(``--evaluation federated|both``) ``federated`` (``hgo_server.fedeval``; the keys are in
docs/operations.md "Federated evaluation").
Extra keys may be added; readers ignore what they do not know.

Two forms on disk, the same lines: plain JSON lines (the server's ``--log``, appended and
flushed record by record so a crash loses at most one line) and gzip-compressed JSON lines
(``*.jsonl.gz``, written at once by :func:`write`; what ``hgo-experiment`` keeps, about 10x
smaller: the per-worker lists repeat the same keys every round). :func:`read` takes either,
recognising gzip by its magic bytes, not by the name.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

REQUIRED = ("round", "t", "sampled", "responded", "block", "quorum", "workers")


def _clean(value: Any) -> Any:
    # JSON has no NaN/Infinity; write null so every line parses with strict readers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class RoundLog:
    """Append-only JSON-lines writer; each record is flushed so a crash loses at most one line."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._fh: IO[str] | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise ValueError(f"round log record lacks required keys {missing}")
        if self._fh is not None:
            self._fh.write(json.dumps(_clean(record), separators=(",", ":")) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RoundLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


GZIP_MAGIC = b"\x1f\x8b"


def write(path: str | Path, records: Iterable[dict[str, Any]], *, compress: bool | None = None) -> Path:
    """Write a whole round log at once (replacing ``path``); gzip-compressed when ``compress``
    (default: when the name ends in ``.gz``). Every record must have the :data:`REQUIRED` keys.

    The lines are byte for byte those :class:`RoundLog` writes for the same records.
    """
    p = Path(path)
    if compress is None:
        compress = p.suffix == ".gz"
    lines = []
    for rec in records:
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"round log record lacks required keys {missing}")
        lines.append(json.dumps(_clean(rec), separators=(",", ":")) + "\n")
    data = "".join(lines).encode("utf-8")
    p.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same records give the same bytes (runs are reproducible, so are their files)
    p.write_bytes(gzip.compress(data, compresslevel=6, mtime=0) if compress else data)
    return p


def compress_file(path: str | Path) -> Path:
    """Replace a plain round log ``X.jsonl`` by ``X.jsonl.gz`` (same lines); returns the new path."""
    p = Path(path)
    out = p.with_name(p.name + ".gz")
    out.write_bytes(gzip.compress(p.read_bytes(), compresslevel=6, mtime=0))
    p.unlink()
    return out


def read(path: str | Path) -> list[dict[str, Any]]:
    """All records of a round log, plain or gzip-compressed; a torn last line (crash while
    writing) is skipped."""
    return list(iter_records(path))


def _text(p: Path) -> str:
    raw = p.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ValueError(f"{p}: a damaged gzip round log ({exc})") from None
    return raw.decode("utf-8")


def iter_records(path: str | Path) -> Iterator[dict[str, Any]]:
    p = Path(path)
    lines = _text(p).splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                return
            raise ValueError(f"{p}:{i + 1}: not a JSON object ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise ValueError(f"{p}:{i + 1}: expected a JSON object, got {type(rec).__name__}")
        yield rec
