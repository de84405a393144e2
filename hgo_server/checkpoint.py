"""Durable, atomic checkpoints of the parameter server's state (docs/design.md §7).

A restarted server resumes from the newest checkpoint with the identical model and round
counter, so a crash costs at most ``--checkpoint-every`` rounds. The paper assumes a
trusted, always-up server (Boubouh et al., SRDS 2022, §III); checkpoints are what make that
assumption cheap to approximate in practice.

File format (one file per checkpoint, little-endian throughout)::

    offset  size  field
    0       8     magic  b"HGOCKPT\\x00"
    8       4     format version (uint32, currently 1)
    12      4     metadata length M in bytes (uint32)
    16      32    sha256 of the metadata bytes
    48      M     metadata: UTF-8 JSON object
                    {"round", "model", "dim", "dtype" ("<f4" | "<f8"), "weights_bytes",
                     "weights_sha256", "config", "extra", "created_unix"}
    48+M    W     the weights, raw float32/float64 little-endian, dim values

File names are ``ckpt-<seq>-r<round>.hgo`` where ``seq`` increases by one with every save
in a directory. "Newest" means the highest ``seq``, not the highest round, so a fresh run
started in a directory that holds an older run's checkpoints never has its own new
checkpoints pruned in favour of the old run's (higher-round) ones.

Durability protocol of :func:`save` (why each step):

1. write the whole file to a temporary name *in the same directory* (``os.replace`` is only
   atomic within one file system);
2. ``flush`` + ``os.fsync`` the file (its bytes are on disk before its name is);
3. ``os.replace`` to the final name (readers see the old set of files or the new one,
   never a half-written file under a checkpoint name);
4. ``os.fsync`` the directory (the rename itself is durable);
5. only then delete checkpoints beyond the newest ``keep``. An existing good checkpoint is
   therefore never overwritten or deleted before the new one is durable.

Policy on corruption (chosen deliberately): :func:`load_latest` **refuses loudly**. When the
newest checkpoint is corrupt (bad magic, unknown version, truncated, checksum mismatch,
garbage JSON) or belongs to another model or dimension, it raises :class:`CheckpointError`
naming the file, the problem and any older checkpoints present; it never silently resumes
from an older state, because that would quietly throw away training progress and, worse,
might hide a disk or operator problem. Because :func:`save` is atomic, a crash of the
server cannot produce such a file: corruption means something outside the server went
wrong, and an operator should look. To resume from an older checkpoint, move the bad file
aside (the error message says which one), or call ``load_latest(..., fallback=True)``,
which skips corrupt files with a logged warning (model/dimension mismatches are never
skipped). Files are never modified or deleted by loading.

One server per checkpoint directory: :func:`save` removes stale temporary files left by a
crash in the middle of a save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hgo_common.errors import HGOError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CheckpointError",
    "CheckpointMismatch",
    "State",
    "list_checkpoints",
    "load",
    "load_latest",
    "save",
]

log = logging.getLogger(__name__)

MAGIC = b"HGOCKPT\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sII32s")  # magic, version, metadata length, metadata sha256
_NAME = re.compile(r"^ckpt-(\d{8,})-r(\d+)\.hgo$")
_TMP_PREFIX = ".tmp-ckpt-"
_DTYPES: dict[str, np.dtype[Any]] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}
# A metadata block larger than this is not something save() wrote; refuse before reading it.
_MAX_METADATA = 64 * 1024 * 1024


class CheckpointError(HGOError):
    """A checkpoint file that must not be loaded; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class CheckpointMismatch(CheckpointError):
    """A valid checkpoint written for another model or dimension (never skipped by fallback)."""


@dataclass
class State:
    """What a server needs to resume training.

    Attributes
    ----------
    round : int
        The next round to run (k of w_k), >= 0.
    weights : np.ndarray
        w_k, shape (dim,), float32 or float64 (the dtype is preserved by save/load).
    model : str
        Model registry name (``hgo_common.models``).
    dim : int
        d, the number of model coordinates; must equal ``weights.size``.
    config : dict
        The server configuration the run was started with (JSON-serializable).
    extra : dict
        Anything else the server wants back (counters, RNG seeds; JSON-serializable).
    """

    round: int
    weights: np.ndarray
    model: str
    dim: int
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _validate(state: State) -> np.ndarray:
    if not isinstance(state.round, int | np.integer) or isinstance(state.round, bool) or state.round < 0:
        raise ValueError(f"State.round must be a non-negative integer, got {state.round!r}")
    if not isinstance(state.model, str) or not state.model:
        raise ValueError(f"State.model must be a non-empty string, got {state.model!r}")
    if not isinstance(state.dim, int | np.integer) or isinstance(state.dim, bool) or state.dim <= 0:
        raise ValueError(f"State.dim must be a positive integer, got {state.dim!r}")
    w = np.asarray(state.weights)
    if w.ndim != 1 or w.size != state.dim:
        raise ValueError(f"State.weights must have shape ({state.dim},), got {w.shape}")
    if w.dtype not in (np.float32, np.float64):
        raise ValueError(f"State.weights must be float32 or float64, got dtype {w.dtype}")
    return np.ascontiguousarray(w, dtype=w.dtype.newbyteorder("<"))


def _encode(state: State) -> bytes:
    w = _validate(state)
    payload = w.tobytes()
    meta: dict[str, Any] = {
        "round": int(state.round),
        "model": state.model,
        "dim": int(state.dim),
        "dtype": w.dtype.str,
        "weights_bytes": len(payload),
        "weights_sha256": hashlib.sha256(payload).hexdigest(),
        "config": state.config,
        "extra": state.extra,
        "created_unix": time.time(),
    }
    try:
        # allow_nan: configs legitimately hold tau = inf; json reads Infinity back.
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"State.config/extra must be JSON-serializable: {exc}") from exc
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(meta_bytes), hashlib.sha256(meta_bytes).digest())
    return header + meta_bytes + payload


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(directory: Path | str) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first (by save sequence number).

    Only names of the form ``ckpt-<seq>-r<round>.hgo`` count; temporary files and anything
    else are ignored. A missing directory holds no checkpoints.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    found.sort()
    return [p for _, p in found]


def save(directory: Path | str, state: State, keep: int = 3) -> Path:
    """Write ``state`` as a new checkpoint, atomically and durably; prune to ``keep`` files.

    Parameters
    ----------
    directory : Path
        Created if missing. One server per directory.
    state : State
        Validated first (ValueError naming the bad field); nothing is written for a bad state.
    keep : int
        How many checkpoints to keep (>= 1), the new one included. Older ones are deleted
        only after the new one is on disk.

    Returns
    -------
    Path
        The new checkpoint file.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    d = Path(directory)
    data = _encode(state)  # validate before touching the directory
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(_TMP_PREFIX + "*"):
        try:
            stale.unlink()
        except OSError:
            pass
    existing = list_checkpoints(d)
    seq = int(_NAME.match(existing[-1].name).group(1)) + 1 if existing else 1  # type: ignore[union-attr]
    final = d / f"ckpt-{seq:08d}-r{int(state.round):010d}.hgo"
    fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    _fsync_dir(d)
    # The new checkpoint is durable; only now may old ones go.
    for old in list_checkpoints(d)[:-keep]:
        try:
            old.unlink()
        except OSError as exc:
            log.warning("could not delete old checkpoint %s: %s", old, exc)
    if len(existing) >= keep:
        _fsync_dir(d)
    return final


def load(
    path: Path | str, *, model: str | None = None, dim: int | None = None, finite: bool = False
) -> State:
    """Read and verify one checkpoint file.

    Raises
    ------
    CheckpointError
        Bad magic, unknown format version, truncated file, metadata or weights checksum
        mismatch, unparsable metadata, trailing bytes, or (when given) another ``model`` /
        ``dim`` than expected; with ``finite``, weights holding inf or NaN. The message
        names the file and the problem.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(p, f"cannot read: {exc}") from exc
    if len(raw) < _HEADER.size:
        raise CheckpointError(p, f"truncated: {len(raw)} bytes, shorter than the {_HEADER.size}-byte header")
    magic, version, meta_len, meta_digest = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(p, f"bad magic {magic!r}, expected {MAGIC!r} (not an HGO checkpoint)")
    if version != FORMAT_VERSION:
        raise CheckpointError(p, f"unsupported format version {version}, this build reads {FORMAT_VERSION}")
    if meta_len > _MAX_METADATA or _HEADER.size + meta_len > len(raw):
        raise CheckpointError(
            p, f"truncated: header announces {meta_len} metadata bytes, file has {len(raw) - _HEADER.size}"
        )
    meta_bytes = raw[_HEADER.size : _HEADER.size + meta_len]
    if hashlib.sha256(meta_bytes).digest() != meta_digest:
        raise CheckpointError(p, "metadata checksum mismatch (file corrupted)")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(p, f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(p, f"metadata is a JSON {type(meta).__name__}, expected an object")
    try:
        m_round = meta["round"]
        m_model = meta["model"]
        m_dim = meta["dim"]
        dtype = _DTYPES[meta["dtype"]]
        n_bytes = meta["weights_bytes"]
        digest = meta["weights_sha256"]
        config = meta.get("config", {})
        extra = meta.get("extra", {})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(p, f"metadata lacks or has a bad field {exc}") from exc
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (m_round, m_dim, n_bytes))
    if not (ints and m_round >= 0 and m_dim > 0 and isinstance(m_model, str)):
        raise CheckpointError(
            p, f"metadata has bad fields: round={m_round!r}, dim={m_dim!r}, model={m_model!r}"
        )
    if not isinstance(config, dict) or not isinstance(extra, dict):
        raise CheckpointError(p, "metadata config/extra are not JSON objects")
    if n_bytes != m_dim * dtype.itemsize:
        raise CheckpointError(p, f"metadata says {n_bytes} weight bytes for dim {m_dim} of {dtype}")
    payload = raw[_HEADER.size + meta_len :]
    if len(payload) != n_bytes:
        what = "truncated" if len(payload) < n_bytes else "trailing bytes"
        raise CheckpointError(p, f"{what}: {len(payload)} weight bytes, expected {n_bytes}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(p, "weights checksum mismatch (file corrupted)")
    if model is not None and m_model != model:
        raise CheckpointMismatch(p, f"written for model {m_model!r}, this server runs model {model!r}")
    if dim is not None and m_dim != dim:
        raise CheckpointMismatch(p, f"written for dimension d={m_dim}, this server's model has d={dim}")
    weights = np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)
    bad = int(np.count_nonzero(~np.isfinite(weights))) if finite else 0
    if bad:
        # Valid checksums say the file is what was written, not that the model is usable: a
        # run poisoned before it was saved would resume by sending inf/NaN to every worker.
        raise CheckpointError(
            p, f"{bad} of {weights.size} weights are not finite (inf or NaN); refusing to resume from it"
        )
    return State(round=m_round, weights=weights, model=m_model, dim=m_dim, config=config, extra=extra)


def load_latest(
    directory: Path | str, *, model: str, dim: int, fallback: bool = False, finite: bool = False
) -> State | None:
    """The newest checkpoint in ``directory``, verified; ``None`` when there is none.

    Parameters
    ----------
    directory : Path
        A missing directory holds no checkpoints (returns None).
    model, dim : str, int
        What the running server trains; a checkpoint for anything else is refused.
    finite : bool
        True: a checkpoint whose weights hold inf or NaN is refused like a corrupt one
        (the server's ``--resume``; see :func:`load`).
    fallback : bool
        False (the default): a corrupt newest checkpoint raises CheckpointError (the module
        docstring explains this choice). True: corrupt files are skipped with a logged
        warning, newest first; if every file is corrupt, CheckpointError for the newest.

    Raises
    ------
    CheckpointError
        Always for a model/dimension mismatch of the newest checkpoint; for corruption unless
        ``fallback``. The file is left untouched.
    """
    files = list_checkpoints(directory)
    if not files:
        return None
    first_error: CheckpointError | None = None
    for i, path in enumerate(reversed(files)):
        try:
            return load(path, model=model, dim=dim, finite=finite)
        except CheckpointError as exc:
            mismatch = isinstance(exc, CheckpointMismatch)
            older = files[: len(files) - 1 - i]
            if not fallback or mismatch:
                hint = ""
                if older and not mismatch:
                    names = ", ".join(o.name for o in reversed(older))
                    hint = (
                        f"; refusing to resume from an older state silently. Older checkpoints "
                        f"present: {names}; move {path.name} aside to resume from them"
                    )
                raise type(exc)(path, exc.problem + hint) from exc
            log.warning("skipping corrupt checkpoint: %s", exc)
            first_error = first_error or exc
    assert first_error is not None
    raise CheckpointError(first_error.path, first_error.problem + "; no valid checkpoint in the directory")
