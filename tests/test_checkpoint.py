"""Checkpoints: round trip, atomicity, pruning, and refusal of every kind of bad file."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from hgo_server import checkpoint
from hgo_server.checkpoint import CheckpointError, CheckpointMismatch, State


def _state(round_: int = 7, dim: int = 50, dtype: type = np.float32, seed: int = 0) -> State:
    rng = np.random.default_rng(seed)
    return State(
        round=round_,
        weights=rng.standard_normal(dim).astype(dtype),
        model="logistic",
        dim=dim,
        config={"q": 8, "tau_ms": float("inf"), "rule": "median"},
        extra={"rounds_without_quorum": 3},
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_exact(tmp_path: Path, dtype: type) -> None:
    st = _state(dtype=dtype)
    st.weights[3] = np.nan  # odd values survive byte-for-byte too
    st.weights[4] = -np.inf
    path = checkpoint.save(tmp_path, st)
    back = checkpoint.load_latest(tmp_path, model="logistic", dim=50)
    assert back is not None
    assert back.weights.dtype == np.dtype(dtype)
    assert back.weights.tobytes() == st.weights.tobytes()
    assert back.weights.flags.writeable
    assert (back.round, back.model, back.dim) == (7, "logistic", 50)
    assert back.config == {"q": 8, "tau_ms": float("inf"), "rule": "median"}
    assert back.extra == {"rounds_without_quorum": 3}
    # the weights are the tail of the file, raw little-endian
    assert path.read_bytes().endswith(st.weights.astype(np.dtype(dtype).newbyteorder("<")).tobytes())


def test_empty_or_missing_directory_gives_none(tmp_path: Path) -> None:
    assert checkpoint.load_latest(tmp_path / "nope", model="logistic", dim=50) is None
    (tmp_path / "unrelated.txt").write_text("x")
    assert checkpoint.load_latest(tmp_path, model="logistic", dim=50) is None


def test_newest_by_sequence_and_keep(tmp_path: Path) -> None:
    paths = [checkpoint.save(tmp_path, _state(round_=r, seed=r), keep=3) for r in (10, 20, 30, 40, 50)]
    left = checkpoint.list_checkpoints(tmp_path)
    assert left == paths[-3:]
    assert not paths[0].exists() and not paths[1].exists()
    st = checkpoint.load_latest(tmp_path, model="logistic", dim=50)
    assert st is not None and st.round == 50
    # A fresh run in the same directory starts again at round 0: its checkpoint is the
    # newest (by sequence), not the old run's round-50 one.
    checkpoint.save(tmp_path, _state(round_=1, seed=99), keep=3)
    st = checkpoint.load_latest(tmp_path, model="logistic", dim=50)
    assert st is not None and st.round == 1
    assert st.weights.tobytes() == _state(round_=1, seed=99).weights.tobytes()


def test_no_temp_files_left_and_stale_ones_removed(tmp_path: Path) -> None:
    (tmp_path / ".tmp-ckpt-crashed").write_bytes(b"half a checkpoint")
    checkpoint.save(tmp_path, _state())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001-r0000000007.hgo"]


def test_failed_write_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = checkpoint.save(tmp_path, _state(round_=1), keep=1)
    before = good.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        checkpoint.save(tmp_path, _state(round_=2), keep=1)
    monkeypatch.undo()
    # keep=1 would have pruned the old file had the new one become durable: it did not.
    assert [p.name for p in tmp_path.iterdir()] == [good.name]
    assert good.read_bytes() == before
    st = checkpoint.load_latest(tmp_path, model="logistic", dim=50)
    assert st is not None and st.round == 1


def test_rename_happens_after_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def replace(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    checkpoint.save(tmp_path, _state())
    # file fsync, then rename, then directory fsync
    assert calls == ["fsync", "replace", "fsync"]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda st: State(1, st.weights[:-1], st.model, st.dim), id="shape"),
        pytest.param(lambda st: State(-1, st.weights, st.model, st.dim), id="round"),
        pytest.param(lambda st: State(1, st.weights.astype(np.int32), st.model, st.dim), id="dtype"),
        pytest.param(lambda st: State(1, st.weights, "", st.dim), id="model"),
        pytest.param(lambda st: State(1, st.weights, st.model, st.dim, config={"x": object()}), id="json"),
    ],
)
def test_bad_state_is_rejected_before_writing(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match=r"State|JSON"):
        checkpoint.save(tmp_path / "d", bad(_state()))  # type: ignore[operator]
    assert not (tmp_path / "d").exists()


def _corrupt_variants(raw: bytes) -> dict[str, tuple[bytes, str]]:
    head = struct.calcsize("<8sII32s")
    meta_len = struct.unpack_from("<8sII32s", raw)[2]
    meta = raw[head : head + meta_len]

    def with_meta(new_meta: bytes, fix_digest: bool = True) -> bytes:
        digest = hashlib.sha256(new_meta).digest() if fix_digest else raw[16:48]
        return (
            struct.pack("<8sII32s", b"HGOCKPT\x00", 1, len(new_meta), digest)
            + new_meta
            + raw[head + meta_len :]
        )

    flipped = bytearray(raw)
    flipped[-5] ^= 0x40
    meta_flip = bytearray(raw)
    meta_flip[head + 3] ^= 0x01
    other_dtype = json.loads(meta)
    other_dtype["weights_bytes"] = 4
    return {
        "magic": (b"NOTACKPT" + raw[8:], "bad magic"),
        "version": (raw[:8] + struct.pack("<I", 99) + raw[12:], "unsupported format version 99"),
        "short": (raw[:20], "truncated"),
        "truncated-weights": (raw[:-8], "truncated"),
        "trailing": (raw + b"\x00\x00\x00\x00", "trailing bytes"),
        "meta-len": (raw[:12] + struct.pack("<I", 10**6) + raw[16:], "truncated"),
        "weights-bitflip": (bytes(flipped), "weights checksum mismatch"),
        "meta-bitflip": (bytes(meta_flip), "metadata checksum mismatch"),
        "garbage-json": (with_meta(b"{not json!"), "not valid JSON"),
        "json-list": (with_meta(b"[1, 2]"), "expected an object"),
        "missing-field": (with_meta(json.dumps({"round": 1}).encode()), "lacks or has a bad field"),
        "inconsistent": (with_meta(json.dumps(other_dtype).encode()), "weight bytes for dim"),
        "empty": (b"", "truncated"),
    }


CORRUPTIONS = [
    "magic",
    "version",
    "short",
    "truncated-weights",
    "trailing",
    "meta-len",
    "weights-bitflip",
    "meta-bitflip",
    "garbage-json",
    "json-list",
    "missing-field",
    "inconsistent",
    "empty",
]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_newest_is_refused_loudly_and_untouched(tmp_path: Path, kind: str) -> None:
    older = checkpoint.save(tmp_path, _state(round_=5, seed=5))
    newest = checkpoint.save(tmp_path, _state(round_=6, seed=6))
    data, problem = _corrupt_variants(newest.read_bytes())[kind]
    newest.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_latest(tmp_path, model="logistic", dim=50)
    msg = str(info.value)
    assert str(newest) in msg and problem in msg
    assert older.name in msg  # tells the operator what else is there
    assert newest.read_bytes() == data and older.exists()  # loading never modifies or deletes


def test_fallback_skips_corrupt_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint.save(tmp_path, _state(round_=5, seed=5))
    newest = checkpoint.save(tmp_path, _state(round_=6, seed=6))
    newest.write_bytes(newest.read_bytes()[:-1])
    with caplog.at_level("WARNING", logger="hgo_server.checkpoint"):
        st = checkpoint.load_latest(tmp_path, model="logistic", dim=50, fallback=True)
    assert st is not None and st.round == 5
    assert st.weights.tobytes() == _state(round_=5, seed=5).weights.tobytes()
    assert any(newest.name in r.getMessage() for r in caplog.records)
    # every file corrupt: still an error, naming a file
    for p in checkpoint.list_checkpoints(tmp_path):
        p.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        checkpoint.load_latest(tmp_path, model="logistic", dim=50, fallback=True)


@pytest.mark.parametrize(
    ("model", "dim", "problem"), [("mlp", 50, "model 'logistic'"), ("logistic", 51, "d=50")]
)
def test_other_model_or_dim_refused_even_with_fallback(
    tmp_path: Path, model: str, dim: int, problem: str
) -> None:
    path = checkpoint.save(tmp_path, _state())
    before = path.read_bytes()
    for fallback in (False, True):
        with pytest.raises(CheckpointMismatch, match=problem) as info:
            checkpoint.load_latest(tmp_path, model=model, dim=dim, fallback=fallback)
        assert str(path) in str(info.value)
    assert path.read_bytes() == before


def test_keep_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        checkpoint.save(tmp_path, _state(), keep=0)


def test_non_finite_weights_are_refused_on_resume_naming_the_file(tmp_path: Path) -> None:
    """Valid checksums, poisoned weights: `--resume` refuses them (issue 20: main resumed and
    sent inf/NaN in the first task); a plain load still round-trips odd values."""
    from hgo_server.config import ConfigError
    from hgo_server.server import Server
    from tests.wireclient import server_config

    cfg = server_config(q=2, model="logistic", checkpoint_dir=str(tmp_path), resume=True)
    fresh = Server(cfg)  # nothing to resume from yet
    dim = fresh.d
    fresh.close()
    st = State(round=4, weights=np.zeros(dim), model="logistic", dim=dim)
    st.weights[7] = np.inf
    path = checkpoint.save(tmp_path, st)
    assert checkpoint.load_latest(tmp_path, model="logistic", dim=dim) is not None
    with pytest.raises(CheckpointError, match=r"1 of \d+ weights are not finite"):
        checkpoint.load_latest(tmp_path, model="logistic", dim=dim, finite=True)
    with pytest.raises(ConfigError) as info:
        Server(cfg)
    assert str(path) in str(info.value) and "not finite" in str(info.value)
