"""Device-local data (issue 21 item 1): workers train on their own files, the server on none.

Real processes throughout where the wire is involved: an ``hgo-server --dataset none`` on
port 0 (``--port-file``), ``hgo-worker --data FILE`` processes on CSV files written from
scikit-learn's *digits* split into per-device files, and the trained model read back from
``--export`` and evaluated here on rows no process saw. The readers and the join check
(``hgo_common.datasets.local``) are checked directly on real files of every format.
"""

from __future__ import annotations

import gzip
import json
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hgo_common.datasets import DataFileError, Source, local
from hgo_common.errors import SpecError
from hgo_common.net import messages as msgs
from hgo_server import config as server_config
from hgo_server.setup import load_setup
from tests.procs import ProcessGroup, console

N_FEATURES, N_CLASSES = 64, 10  # digits: 8x8 images, 10 classes


def _digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits shuffled once: 1,400 training rows (for the devices) and 397 held out."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(y.size)
    X, y = X[perm], y[perm]
    return X[:1400], y[:1400], X[1400:], y[1400:]


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, *, label_first: bool = False) -> Path:
    cols = [f"px{i}" for i in range(X.shape[1])]
    if label_first:
        header, table = ["label", *cols], np.column_stack([y, X])
    else:
        header, table = [*cols, "label"], np.column_stack([X, y])
    np.savetxt(path, table, delimiter=",", header=",".join(header), comments="", fmt="%.10g")
    return path


def _start_server(procs: ProcessGroup, tmp: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "port"
    server = procs.start(
        [*console("hgo-server"), "--port", "0", "--port-file", str(port_file), "--dataset", "none",
         "--model", "mlp", "--features", str(N_FEATURES), "--classes", str(N_CLASSES), *extra],
        name="server",
    )  # fmt: skip
    procs.until(lambda: port_file.exists() and port_file.read_text().strip(), 60, "the server's port file")
    return server, int(port_file.read_text())


def _worker(procs: ProcessGroup, port: int, name: str, *extra: str) -> subprocess.Popen[bytes]:
    return procs.start(
        [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--rate", "0", "--name", name,
         "--reconnect-timeout", "60", *extra],
        name=name,
    )  # fmt: skip


# ---------------------------------------------------------------------------- over the wire


@pytest.mark.slow
def test_workers_on_their_own_csv_files_train_a_server_that_has_no_training_data(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    X_tr, y_tr, X_te, y_te = _digits_split()
    # two devices, two layouts (label last / label first): each file read by its own worker
    files = [_write_csv(tmp_path / f"dev{i}.csv", X_tr[i::2], y_tr[i::2], label_first=i == 1) for i in (0, 1)]
    model_file, log_file = tmp_path / "model.npz", tmp_path / "rounds.jsonl"
    server, port = _start_server(
        procs, tmp_path, "--q", "2", "--min-workers", "2", "--rounds", "80", "--tau", "inf", "--lr", "0.5",
        "--eval-every", "20", "--export", str(model_file), "--log", str(log_file),
    )  # fmt: skip
    workers = [_worker(procs, port, f"dev{i}", "--data", str(f), f"--seed={i}") for i, f in enumerate(files)]
    assert procs.wait(server, 240) == 0, procs.logs()
    for w in workers:
        assert procs.wait(w, 60) == 0, procs.logs()

    server_log = procs.log(server)
    assert "no training data on this server (--dataset none)" in server_log
    assert "server evaluation OFF (no --test-data)" in server_log
    assert "rounds=80 (no server evaluation: --dataset none without --test-data)" in server_log
    # each device joined with its own rows, announced in its Join; no shard was cut or sent
    assert server_log.count("shard=own(700 rows)") == 2, server_log[-3000:]
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(records) == 80 and all("accuracy" not in r for r in records)  # no test split: no evaluation
    assert all(r["responded"] == 2 for r in records)

    # The trained model on rows no process saw, scaled by the rule a device applies to its own
    # rows (--scaling auto on CSV: standardize on those rows).
    from hgo_common.models import load

    exported = load(model_file)
    mean, std = X_te.mean(axis=0), X_te.std(axis=0)
    std[std == 0] = 1.0
    res = exported.model.evaluate(exported.weights, ((X_te - mean) / std).astype(np.float32), y_te)
    assert res["accuracy"] > 0.8, res  # chance is 0.1 (10 classes)


@pytest.mark.slow
def test_data_that_does_not_fit_the_run_is_refused_at_join_naming_both_values(
    procs: ProcessGroup, tmp_path: Path
) -> None:
    X_tr, y_tr, _, _ = _digits_split()
    narrow = _write_csv(tmp_path / "narrow.csv", X_tr[:100, :30], y_tr[:100])
    labels_out = _write_csv(tmp_path / "labels.csv", X_tr[:100], y_tr[:100] + 3)  # 3..12
    real = _write_csv(tmp_path / "real.csv", X_tr[:100], y_tr[:100] + 0.25)  # regression targets
    # min-workers never reached: the server waits, and only the joins are exercised
    server, port = _start_server(procs, tmp_path, "--q", "1", "--min-workers", "50")
    cases = [
        (["--data", str(narrow)], ["30 features", "takes 64"]),
        (["--data", str(labels_out)], ["labels in [3, 12]", "10 classes are 0..9"]),
        (["--data", str(real)], ["real-valued labels", "[0.25, 9.25]", "classification with 10 classes"]),
        ([], ["no training data (--dataset none)", "--data PATH"]),
    ]
    for i, (args, needles) in enumerate(cases):
        w = _worker(procs, port, f"bad{i}", *args)
        code = procs.wait(w, 60)
        out = procs.log(w)
        assert code == 2, out
        assert "local data refused" in out, out
        for needle in needles:
            assert needle in out, (needle, out)
            if args:  # the server logs the refusal too, with the same values
                procs.until(lambda n=needle: n in procs.log(server), 30, f"{needle!r} in the server's log")
    procs.until(lambda: "no --data, and this server has no training data" in procs.log(server), 30, "the log")
    assert server.poll() is None  # refusals end the worker, never the server


@pytest.mark.slow
def test_a_bad_data_file_ends_the_worker_before_it_connects(procs: ProcessGroup, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,x,1\n")
    w = procs.start([*console("hgo-worker"), "--server", "127.0.0.1:9", "--data", str(bad)], name="w")
    assert procs.wait(w, 60) == 2
    assert "line 3: 'x' is not a number" in procs.log(w)


# ---------------------------------------------------------------------------- the server's settings


def test_a_server_without_data_takes_its_shape_from_the_settings(tmp_path: Path) -> None:
    cfg = server_config.from_mapping({"dataset": "none", "model": "mlp", "features": 64, "classes": 10})
    setup = load_setup(cfg)
    assert (setup.spec.n_features, setup.spec.n_classes, setup.spec.dataset) == (64, 10, "none")
    assert setup.spec.layer_sizes == (64, 30, 10) and not setup.training_data and not setup.evaluates
    assert cfg.num_shards == 1

    _, _, X_te, y_te = _digits_split()
    test = _write_csv(tmp_path / "test.csv", X_te, y_te)
    setup = load_setup(cfg.replace(test_data=str(test)))
    assert setup.evaluates and setup.dataset.n_test == y_te.size
    assert np.array_equal(setup.dataset.y_test, y_te)
    np.testing.assert_allclose(setup.dataset.X_test.mean(axis=0), 0.0, atol=1e-5)  # standardized on its rows


@pytest.mark.parametrize(
    ("settings", "needles"),
    [
        ({"dataset": "none", "model": "mlp"}, ["--features N", "--features None"]),
        ({"dataset": "none", "features": 64}, ["--model NAME", "--model None"]),
        ({"dataset": "none", "model": "mlp", "features": 64}, ["--classes K"]),
        ({"dataset": "none", "model": "linear", "features": 3, "classes": 4}, ["--classes 4", "regression"]),
        ({"dataset": "digits", "features": 64}, ["--features", "--dataset none", "'digits'"]),
        ({"dataset": "none", "model": "mlp", "features": 64, "classes": 1}, ["classes", "1"]),
    ],
)
def test_a_server_without_data_says_what_is_missing(settings: dict[str, object], needles: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        load_setup(server_config.from_mapping(settings))
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_test_data_that_does_not_fit_is_refused_naming_both(tmp_path: Path) -> None:
    X_tr, y_tr, _, _ = _digits_split()
    narrow = _write_csv(tmp_path / "narrow.csv", X_tr[:50, :20], y_tr[:50])
    cfg = server_config.from_mapping(
        {"dataset": "none", "model": "mlp", "features": 64, "classes": 10, "test_data": str(narrow)}
    )
    with pytest.raises(SpecError, match=r"--test-data .*has 20 features, but the server's model takes 64"):
        load_setup(cfg)


# ---------------------------------------------------------------------------- the readers


def test_csv_label_column_by_default_name_index_and_last(tmp_path: Path) -> None:
    X_tr, y_tr, _, _ = _digits_split()
    X, y = X_tr[:40], y_tr[:40]
    first = _write_csv(tmp_path / "first.csv", X, y, label_first=True)
    t = local.read(first, scaling="none")  # the column named "label", wherever it is
    assert t.fmt == "csv" and np.array_equal(t.y, y) and np.array_equal(t.X, X.astype(np.float32))
    t = local.read(first, label_column="0", scaling="none")
    assert np.array_equal(t.y, y)
    bare = tmp_path / "bare.txt"
    np.savetxt(bare, np.column_stack([X, y]), fmt="%g")  # whitespace, no header: the last column
    t = local.read(bare, scaling="none")
    assert t.fmt == "csv" and np.array_equal(t.y, y)
    t = local.read(bare, label_column="-1")
    np.testing.assert_allclose(t.X.mean(axis=0), 0.0, atol=1e-5)  # auto: standardized on its rows
    assert t.feature_std is not None and np.all(t.feature_std > 0)
    with pytest.raises(DataFileError, match="'digit' is not a column"):
        local.read(first, label_column="digit")
    summary = local.read(first).summary()
    assert summary == msgs.LocalData(40, 64, "classification", float(y.min()), float(y.max()), len(set(y)))


def test_libsvm_is_sparse_pads_to_the_run_and_maps_minus_one(tmp_path: Path) -> None:
    f = tmp_path / "device.txt"
    f.write_text("+1 1:0.5 3:2\n-1 2:1\n+1 3:-1\n")
    t = local.read(f, scaling="none")
    assert t.fmt == "libsvm" and t.sparse and t.X.shape == (3, 3)
    assert t.y.tolist() == [1.0, 0.0, 1.0]
    s = t.summary()
    assert local.fit_error(s, 5, 2, "classification") is None  # a narrower sparse table fits a wider model
    assert "feature index 3" in str(local.fit_error(s, 2, 2, "classification"))
    X, y = t.fitted(5, "classification")
    assert X.shape == (3, 5) and X[0].tolist() == [0.5, 0.0, 2.0, 0.0, 0.0] and y.dtype == np.int64


def _idx(path: Path, magic: int, arr: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_and_cifar_files_read_as_images_in_unit_range(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 4, 4))
    labels = rng.integers(0, 10, size=12)
    d = tmp_path / "idx"
    d.mkdir()
    _idx(d / "device-images-idx3-ubyte.gz", 2051, images)
    _idx(d / "device-labels-idx1-ubyte.gz", 2049, labels)
    for path in (d, d / "device-images-idx3-ubyte.gz"):
        t = local.read(path)
        assert t.fmt == "idx" and t.X.shape == (12, 16) and t.feature_mean is None  # images: not standardized
        np.testing.assert_allclose(t.X, images.reshape(12, 16) / 255.0, rtol=1e-6)
        assert np.array_equal(t.y, labels)

    c = tmp_path / "cifar"
    c.mkdir()
    data = rng.integers(0, 256, size=(5, 3072)).astype(np.uint8)
    with (c / "data_batch_1").open("wb") as fh:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 9]}, fh)
    t = local.read(c)
    assert t.fmt == "cifar" and t.X.shape == (5, 3072) and float(t.X.max()) <= 1.0
    assert t.y.tolist() == [0, 1, 2, 3, 9]


def test_the_join_check_names_the_workers_value_and_the_servers() -> None:
    ok = msgs.LocalData(100, 64, "classification", 0, 9, 10)
    assert local.fit_error(ok, 64, 10, "classification") is None
    assert local.fit_error(ok, 64, 0, "regression") is None  # integer targets are valid regression
    assert local.fit_error(ok, 30, 10, "classification") == (
        "the worker's data has 64 features, but the server's model takes 30"
    )
    why = local.fit_error(ok, 64, 2, "classification")
    assert why == "the worker's data has labels in [0, 9], but the server's 2 classes are 0..1"
    nan = msgs.LocalData(100, 64, "classification", float("nan"), 9, 10)
    assert "non-finite" in str(local.fit_error(nan, 64, 10, "classification"))
    with pytest.raises(ValueError, match="--data-format must be one of"):
        local.read(Path(__file__), "parquet")


def test_a_fleet_file_gives_each_session_its_own_data(tmp_path: Path) -> None:
    from hgo_worker import fleet
    from hgo_worker.client import WorkerConfig

    X_tr, y_tr, _, _ = _digits_split()
    a = _write_csv(tmp_path / "a.csv", X_tr[:30], y_tr[:30])
    b = _write_csv(tmp_path / "b.csv", X_tr[30:80], y_tr[30:80], label_first=True)
    spec = {"sessions": [{"data": str(a)}, {"data": str(b), "scaling": "none"}, {}]}
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(spec))
    workers = fleet.build(fleet.load_fleet(path, WorkerConfig(server="127.0.0.1:9")), metrics=False)
    tables = [w.local_table for w in workers]
    assert tables[0] is not None and tables[0].summary().examples == 30 and tables[0].feature_mean is not None
    assert tables[1] is not None and np.array_equal(tables[1].X, X_tr[30:80].astype(np.float32))
    assert tables[2] is None  # no --data: the server's shard, as before
    path.write_text(json.dumps({"sessions": [{"data": str(tmp_path / "missing.csv")}]}))
    with pytest.raises(ValueError, match=r"missing\.csv.* does not exist"):
        fleet.build(fleet.load_fleet(path, WorkerConfig(server="127.0.0.1:9")), metrics=False)


def _drain(sess: object) -> list[object]:
    out = []
    box = sess.outbox  # type: ignore[attr-defined]
    while not box.empty():
        out.append(box.get_nowait())
    return out


async def test_a_server_with_data_admits_a_worker_with_its_own_and_sends_it_no_shard() -> None:
    from hgo_server.errors import FailedPrecondition, InvalidArgument
    from hgo_server.messages import JoinRequest, ShardSlice, Welcome
    from hgo_server.server import Server

    core = Server(server_config.from_mapping({"dataset": "digits", "model": "mlp", "q": 1}))
    try:
        own = msgs.LocalData(700, 64, "classification", 0, 9, 10)
        sent = _drain(core.join(JoinRequest(protocol_version=1, local_data=own)))
        assert isinstance(sent[0], Welcome) and not any(isinstance(m, ShardSlice) for m in sent)
        shard = _drain(core.join(JoinRequest(protocol_version=1, wants_shard=True)))
        assert any(isinstance(m, ShardSlice) for m in shard)  # the server's shard, as before
        with pytest.raises(InvalidArgument, match="must not ask for a shard"):
            core.join(JoinRequest(protocol_version=1, wants_shard=True, local_data=own))
        narrow = msgs.LocalData(700, 8, "classification", 0, 9, 10)
        with pytest.raises(FailedPrecondition, match="has 8 features, but the server's model takes 64"):
            core.join(JoinRequest(protocol_version=1, local_data=narrow))
    finally:
        core.close()


def test_a_regression_run_takes_real_valued_targets_and_refuses_no_classification() -> None:
    targets = msgs.LocalData(300, 10, "regression", -1.5, 346.0, 0)
    assert local.fit_error(targets, 10, 0, "regression") is None
    assert local.fit_error(targets, 10, 3, "classification") == (
        "the worker's data has real-valued labels (regression targets in [-1.5, 346]), but the server "
        "trains classification with 3 classes"
    )
    cfg = server_config.from_mapping({"dataset": "none", "model": "linear", "features": 10})
    setup = load_setup(cfg)
    assert setup.model.task == "regression" and setup.spec.n_classes == 0


async def test_a_server_without_data_says_so_in_its_status_and_refuses_workers_without_data() -> None:
    from hgo_server.errors import FailedPrecondition
    from hgo_server.messages import JoinRequest
    from hgo_server.server import Server

    cfg = server_config.from_mapping({"dataset": "none", "model": "mlp", "features": 64, "classes": 10})
    core = Server(cfg)
    try:
        status = core.status()
        assert status.metric_name == "none" and np.isnan(status.last_metric)
        for join in (JoinRequest(protocol_version=1, wants_shard=True), JoinRequest(protocol_version=1)):
            with pytest.raises(FailedPrecondition, match=r"^local data refused: this server has no training"):
                core.join(join)
        assert not core.sessions
    finally:
        core.close()


def _npz_reader(path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    assert path is not None
    with np.load(path) as z:
        return z["X"], z["y"]


NPZ_SOURCE = Source("classification", 3, "mlp", _npz_reader, needs_files=True, standardize=False)
"""A dataset plug-in for the test below: its reader reads the device's ``--data`` path."""


def test_a_dataset_plugin_reads_the_devices_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(20, 5)), rng.integers(0, 3, size=20)
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    t = local.read(tmp_path / "mine.npz", "tests.test_localdata:NPZ_SOURCE")
    assert t.fmt == "tests.test_localdata:NPZ_SOURCE" and t.feature_mean is None  # its Source says no scaling
    np.testing.assert_allclose(t.X, X.astype(np.float32))
    assert t.summary().task == "classification" and t.summary().label_max == float(y.max())
    np.savez(tmp_path / "bad.npz", X=X, y=y + 5)  # labels past the plug-in's 3 classes
    with pytest.raises(ValueError, match=r"class ids in 0\.\.2"):
        local.read(tmp_path / "bad.npz", "tests.test_localdata:NPZ_SOURCE")


def test_a_run_that_builds_its_own_shards_refuses_dataset_none() -> None:
    """The simulator (and so hgo-experiment) needs a training set: 'none' is refused by name."""
    from hgo_common.errors import SpecError
    from hgo_lab.simulator import SimConfig, Simulation

    with pytest.raises(SpecError, match=r"dataset 'none' means the devices hold the data.*'digits'"):
        Simulation(SimConfig(dataset="none", model="mlp"))
