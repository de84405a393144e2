"""The >= 1M-parameter CNN (``cnn-cifar``) on ``cifar10-synthetic``, alone and over gRPC.

Issue 23, item 4: a real ``hgo-server`` and two ``hgo-worker`` processes train the
1,702,794-parameter CNN on the generated CIFAR-10-shaped set (not CIFAR-10; see
``hgo_common.datasets.cifar10_synthetic``): w_k is 6.8 MB a round, gradients stream in
chunks, C_k is stratified over the 10 parameter tensors. Skips when torch is absent
(``make install-torch``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from hgo_common import datasets, models, order
from tests.procs import ProcessGroup, console, free_port

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'hgo[torch]')")

D = 1_702_794
GROUPS = (2400, 32, 51200, 64, 1572864, 384, 73728, 192, 1920, 10)


def test_cnn_cifar_shape_and_gradient() -> None:
    m = models.create("cnn-cifar", n_features=3072, n_classes=10)
    assert m.dim == D and m.dim >= 1_000_000 and tuple(m.groups) == GROUPS
    assert 4 * m.dim > 4 * 2**20  # w_k is more than 4 MiB of float32 on the wire
    rng = np.random.default_rng(0)
    w = m.init(rng)
    np.testing.assert_array_equal(w, m.init(np.random.default_rng(0)))  # w_0 from the run seed
    X = rng.random((8, 3072), dtype=np.float32)
    y = np.arange(8) % 10
    g = m.gradient(w, X, y)
    assert g.shape == (D,) and np.all(np.isfinite(g))
    # every tensor gets a gradient (no dead layer at init)
    offsets = np.cumsum((0, *GROUPS))
    assert all(np.any(g[a:b] != 0) for a, b in itertools.pairwise(offsets))
    coords = rng.choice(D, size=50, replace=False)
    np.testing.assert_array_equal(m.gradient(w, X, y, coords), g[coords])
    with pytest.raises(ValueError, match=r"cnn-cifar: needs RGB images 3 x s x s .* n_features=784"):
        models.create("cnn-cifar", n_features=784, n_classes=10)


def test_orders_for_the_conv_net() -> None:
    """flat and stratified expand at d = 1.7M; units (fully connected layers only) is refused
    naming the groups."""
    flat = order.make_order(3, D, "flat", GROUPS)
    strat = order.make_order(3, D, "stratified", GROUPS)
    for o in (flat, strat):
        assert o.shape == (D,) and np.array_equal(np.sort(o), np.arange(D))
    # stratified: a 10,000-coordinate prefix holds each tensor in proportion (floor or ceil)
    owner = np.searchsorted(np.cumsum(GROUPS), strat[:10_000], side="right")
    counts = np.bincount(owner, minlength=len(GROUPS))
    share = 10_000 * np.asarray(GROUPS) / D
    assert np.all(counts >= np.floor(share)) and np.all(counts <= np.ceil(share))
    with pytest.raises(ValueError, match="the units order needs fully connected layers"):
        order.make_order(3, D, "units", GROUPS)


def test_synthetic_set_is_cifar_shaped_and_reproducible(tmp_path: Path) -> None:
    from hgo_common.datasets import cifar10_synthetic

    ds = datasets.load("cifar10-synthetic")
    assert (ds.n_train, ds.n_test, ds.n_features, ds.n_classes) == (10_000, 2_000, 3072, 10)
    assert ds.default_model == "cnn-cifar" and ds.feature_mean is None  # pixels as stored
    assert np.bincount(ds.y_train).tolist() == [1000] * 10 and np.bincount(ds.y_test).tolist() == [200] * 10
    assert ds.X_train.min() >= 0.0 and ds.X_train.max() <= 1.0
    # uint8 pixels / 255, like the real batches
    np.testing.assert_allclose(ds.X_train[:50] * 255, np.rint(ds.X_train[:50] * 255), atol=1e-3)
    again = datasets.load("cifar10-synthetic")
    np.testing.assert_array_equal(ds.X_test, again.X_test)
    # the python-batch writer round-trips through the real CIFAR-10 reader
    cifar10_synthetic.write_batches(tmp_path, n_train=50, n_test=20)
    small = datasets.load("cifar10", data_dir=tmp_path)
    tr, _y_tr, _te, y_te = cifar10_synthetic._raw(50, 20)
    np.testing.assert_array_equal(small.X_train, tr.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(small.y_test, y_te)


@pytest.mark.slow  # torch start-up in three processes, 16 rounds at d = 1.7M: ~1-3 min on 2 shared cores
def test_cnn_cifar_trains_over_grpc(tmp_path: Path, procs: ProcessGroup) -> None:
    """A real server and 2 torch workers (unthrottled, s = 32 each): every round moves w_k
    (6.8 MB) to each worker and d values back in chunks; accuracy on the 2,000 test images
    ends well above chance (0.1; a fresh w_0 scores 0.10-0.12)."""
    port = free_port()
    log = tmp_path / "rounds.jsonl"
    server = procs.start(
        [*console("hgo-server"), "--port", str(port), "--dataset", "cifar10-synthetic",
         "--model", "cnn-cifar", "--max-train", "2000", "--q", "2", "--min-workers", "2",
         "--rounds", "16", "--tau", "120s", "--lr", "0.03", "--eval-every", "8",
         "--order", "stratified", "--log", str(log), "--seed", "0"],
        name="server",
    )  # fmt: skip
    procs.wait_log(server, "waiting for 2 workers", timeout=180)
    workers = [
        procs.start(
            [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--rate", "0", "--seed", str(i),
             "--reconnect-timeout", "120"],
            name=f"worker{i}", env={"HGO_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"},
        )
        for i in range(2)
    ]
    assert procs.wait(server, timeout=900) == 0, procs.logs()
    for w in workers:
        assert procs.wait(w, timeout=120) == 0, procs.log(w)
    assert f"d={D}" in procs.log(server)
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(recs) == 16 and all(r["quorum"] for r in recs), [r["responded"] for r in recs]
    # unthrottled workers deliver every coordinate, streamed in chunks of at most 16,384 values
    for r in recs:
        for w in r["workers"]:
            assert w["prefix"] == D and w["bytes"] == 4 * D and w["chunks"] >= D // 16384, w
    acc = {r["round"]: r["accuracy"] for r in recs if "accuracy" in r}
    assert set(acc) >= {15}, acc
    assert acc[15] > 0.25, acc  # chance is 0.1
