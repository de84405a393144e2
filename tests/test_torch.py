"""PyTorch models: the adapter's gradient, its agreement with the numpy MLP, and a CNN over gRPC.

Needs the optional extra (``pip install 'hgo[torch]'``; .ci/run installs the CPU build);
every test here skips, saying so, when torch is absent (``make install-torch`` adds it). That
the numpy path never imports torch is checked in tests/test_layers.py, which needs no torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hgo_common import models, plugins
from tests.procs import ProcessGroup, console

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'hgo[torch]')")

from hgo_common.models.torch_adapter import TorchModel, image_shape  # noqa: E402


def _finite_diff(m: TorchModel, w: np.ndarray, X: np.ndarray, y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    h = 1e-6
    out = np.empty(len(idx))
    for k, j in enumerate(idx):
        e = np.zeros(m.dim)
        e[j] = h
        out[k] = (m.loss(w + e, X, y) - m.loss(w - e, X, y)) / (2 * h)
    return out


def test_adapter_gradient_matches_finite_differences() -> None:
    # float64: central differences are exact enough to compare at 1e-6
    module = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    m = TorchModel(module, n_features=5, n_classes=3, l2=0.1, dtype=torch.float64)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 5)), rng.integers(0, 3, size=20)
    w = rng.normal(size=m.dim) * 0.5
    idx = np.arange(m.dim)
    np.testing.assert_allclose(m.gradient(w, X, y), _finite_diff(m, w, X, y, idx), rtol=1e-6, atol=1e-9)
    # regression: half the mean squared error
    reg = TorchModel(torch.nn.Linear(5, 1), n_features=5, n_classes=0, task="regression", dtype=torch.float64)
    t = rng.normal(size=20)
    wr = rng.normal(size=reg.dim)
    fd = _finite_diff(reg, wr, X, t, np.arange(reg.dim))  # type: ignore[arg-type]
    np.testing.assert_allclose(reg.gradient(wr, X, t), fd, rtol=1e-6, atol=1e-9)


def test_cnn_gradient_matches_finite_differences() -> None:
    # The built-in CNN's layers (conv, ReLU, max-pool, linear) in float64, at 60 coordinates
    # spread over all six parameter tensors.
    from hgo_common.models.torch_adapter import cnn

    m = cnn(64, 10, l2=0.01, dtype=torch.float64)
    rng = np.random.default_rng(1)
    X = rng.random((16, 64))
    y = rng.integers(0, 10, size=16)
    w = m.init(rng)
    idx = rng.choice(m.dim, size=60, replace=False)
    g = m.gradient(w, X, y, coords=idx)
    np.testing.assert_allclose(g, _finite_diff(m, w, X, y, idx), rtol=1e-5, atol=1e-8)
    # float32 (the shipped default) agrees with float64 to float32 precision
    m32 = cnn(64, 10, l2=0.01)
    np.testing.assert_allclose(m32.gradient(w, X, y), m.gradient(w, X, y), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_adapter_equals_the_numpy_mlp_with_the_same_weights(activation: str) -> None:
    p, h, c = 12, 9, 4
    act = torch.nn.Sigmoid() if activation == "sigmoid" else torch.nn.ReLU()
    module = torch.nn.Sequential(torch.nn.Linear(p, h), act, torch.nn.Linear(h, c))
    tm = TorchModel(module, n_features=p, n_classes=c, l2=0.05)
    nm = models.MLP(p, c, (h,), 0.05, activation)
    assert tm.dim == nm.dim and tm.groups == nm.groups  # one group per tensor = the MLP's layout
    rng = np.random.default_rng(2)
    w = nm.init(rng)
    X = rng.normal(size=(30, p)).astype(np.float32)
    y = rng.integers(0, c, size=30)
    np.testing.assert_allclose(tm.gradient(w, X, y), nm.gradient(w, X, y), rtol=1e-4, atol=1e-6)
    coords = rng.permutation(nm.dim)[:50]
    np.testing.assert_allclose(
        tm.gradient(w, X, y, coords), nm.gradient(w, X, y, coords), rtol=1e-4, atol=1e-6
    )
    assert tm.loss(w, X, y) == pytest.approx(nm.loss(w, X, y), rel=1e-5)
    np.testing.assert_array_equal(tm.predict(w, X), nm.predict(w, X))
    assert tm.evaluate(w, X, y)["accuracy"] == nm.evaluate(w, X, y)["accuracy"]


def test_init_is_reproducible_and_leaves_torch_global_state_alone() -> None:
    m = models.create("cnn", n_features=784, n_classes=10)
    torch.manual_seed(123)
    before = torch.rand(1).item()
    torch.manual_seed(123)
    a = m.init(np.random.default_rng(7))
    b = m.init(np.random.default_rng(7))
    after = torch.rand(1).item()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, m.init(np.random.default_rng(8)))
    assert before == after  # the global torch stream did not move
    assert a.shape == (m.dim,) and np.all(np.isfinite(a))


def test_cnn_shapes_for_the_papers_datasets() -> None:
    assert (
        image_shape(784) == (1, 28, 28) and image_shape(3072) == (3, 32, 32) and image_shape(64) == (1, 8, 8)
    )
    mnist = models.create("cnn", n_features=784, n_classes=10)
    cifar = models.create("cnn", n_features=3072, n_classes=10)
    assert (mnist.dim, cifar.dim) == (9098, 11642)
    assert len(mnist.groups) == 6 and sum(mnist.groups) == mnist.dim and not mnist.partial_gradients
    with pytest.raises(ValueError, match="n_features=10 is not a square image"):
        models.create("cnn", n_features=10, n_classes=2)


def test_any_module_through_a_plugin_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "torchplug.py").write_text(
        "import torch\n"
        "from hgo_common.models.torch_adapter import TorchModel\n"
        "def Net(*, n_features, n_classes):\n"
        "    module = torch.nn.Sequential(torch.nn.Linear(n_features, 16), torch.nn.ReLU(),\n"
        "                                 torch.nn.Linear(16, n_classes))\n"
        "    return TorchModel(module, n_features=n_features, n_classes=n_classes, name='net')\n"
        "def Broken(*, n_features, n_classes):\n"
        "    module = torch.nn.Linear(n_features + 1, n_classes)  # wrong input width\n"
        "    return TorchModel(module, n_features=n_features, n_classes=n_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from hgo_common import datasets

    ds = datasets.load("digits", seed=0)
    m = models.create("torchplug:Net", n_features=ds.n_features, n_classes=ds.n_classes)
    w = m.init(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    for _ in range(300):
        b = rng.choice(ds.n_train, size=64, replace=False)
        w -= 0.2 * m.gradient(w, ds.X_train[b], ds.y_train[b])
    assert m.evaluate(w, ds.X_test, ds.y_test)["accuracy"] > 0.9
    with pytest.raises(
        plugins.PluginError, match=r"model 'torchplug:Broken': gradient\(\) on 8 rows .* raised"
    ):
        models.create("torchplug:Broken", n_features=ds.n_features, n_classes=ds.n_classes)


@pytest.mark.slow  # about 40 s on 2 cores
def test_cnn_trains_over_grpc_with_mixed_profiles_and_a_robust_rule(
    shared_data: Path, tmp_path: Path, procs: ProcessGroup
) -> None:
    """hgo-run: a real hgo-server and 6 hgo-worker processes (2 weak, 2 average, 2 powerful,
    one of them Byzantine with sign-flip), median, the CNN on MNIST: far above chance (0.1)."""
    mnist = shared_data / "mnist"
    if not mnist.is_dir():
        pytest.skip(f"MNIST not found at {mnist}")
    out = tmp_path / "run"
    argv = [
        *console("hgo-run"), "--dataset", "mnist", "--data-dir", str(mnist), "--model", "cnn",
        "--workers", "6", "--attackers", "1", "--attack", "sign-flip", "--rule", "median",
        "--rounds", "150", "--lr", "0.3", "--eval-every", "50", "--server-arg=--max-train=12000",
        "--no-progress", "--timeout", "240", "--out", str(out),
    ]  # fmt: skip
    run = procs.start(argv, name="hgo-run")
    assert procs.wait(run, timeout=300) == 0, procs.log(run)[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dim"] == 9098 and summary["worker_exit_codes"] == [0] * 6
    assert summary["metric_name"] == "accuracy" and summary["metric"] > 0.6, summary
    # heterogeneous for real: weak workers send a short prefix of d = 9098, powerful ones far more
    prefix = summary["mean_prefix"]
    assert prefix["weak"] < 0.25 * 9098 < prefix["powerful"], prefix


def test_cnn_learns_from_cifar10_python_batches(tmp_path: Path) -> None:
    """The CIFAR-10 loader's channel-major rows feed the CNN's (3, 32, 32) input: a class
    that is 'the bright channel' is learned from fake batches in the official format."""
    import pickle

    from hgo_common import datasets

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 3, size=30)
        data = rng.integers(0, 100, size=(30, 3, 1024), dtype=np.uint8)
        data[np.arange(30), labels] += 150  # class c: channel c is bright
        with (d / name).open("wb") as fh:
            pickle.dump(
                {b"data": data.reshape(30, 3072), b"labels": [int(v) for v in labels]}, fh, protocol=2
            )
    ds = datasets.load("cifar10", data_dir=tmp_path)
    m = models.create("cnn", n_features=ds.n_features, n_classes=ds.n_classes)
    assert m.dim == 11642
    w = m.init(np.random.default_rng(0))
    before = m.evaluate(w, ds.X_test, ds.y_test)
    for k in range(60):
        b = np.random.default_rng(k).choice(ds.n_train, size=32, replace=False)
        w -= 0.05 * m.gradient(w, ds.X_train[b], ds.y_train[b])
    after = m.evaluate(w, ds.X_test, ds.y_test)
    assert after["loss"] < before["loss"] and after["accuracy"] > 0.9, (before, after)


def test_a_worker_without_torch_is_told_to_install_the_extra(tmp_path: Path, procs: ProcessGroup) -> None:
    """The server trains the built-in cnn; a worker whose Python cannot import torch exits 2
    naming hgo[torch] (no traceback), one that can trains to the end."""
    from tests.procs import free_port

    blocker = tmp_path / "notorch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    # The server waits for 2 workers, so the torch-less one is welcomed (and leaves) before
    # training starts; two with torch then train to the end. 40 rounds of 250 ms: a torch
    # worker warms up (import, first backward pass) after its Welcome, seconds on a busy
    # machine, and must be serving before the server is done.
    port = free_port()
    server = procs.start(
        [*console("hgo-server"), "--port", str(port), "--dataset", "digits", "--model", "cnn",
         "--q", "1", "--min-workers", "2", "--rounds", "40", "--tau", "250", "--no-early-close"],
        name="server",
    )  # fmt: skip
    bare = procs.start(
        [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--reconnect-timeout", "30"],
        name="bare",
        env={"PYTHONPATH": str(blocker.parent)},
    )
    assert procs.wait(bare, timeout=60) == 2, procs.log(bare)
    log = procs.log(bare)
    assert "model 'cnn' needs PyTorch" in log and "pip install 'hgo[torch]'" in log, log
    assert "Traceback" not in log
    oks = [
        procs.start([*console("hgo-worker"), "--server", f"127.0.0.1:{port}"], name=f"ok{i}")
        for i in range(2)
    ]
    for ok in oks:
        assert procs.wait(ok, timeout=90) == 0, procs.log(ok)
    assert procs.wait(server, timeout=30) == 0, procs.log(server)
