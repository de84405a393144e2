"""Plug-ins: names resolved to user code, entry points, the spec's origin, and every bad plug-in.

The plug-in modules are real files written to a temporary folder on ``sys.path`` (and on
``PYTHONPATH`` for the processes); a fake installed distribution (a ``.dist-info`` folder
with ``entry_points.txt``) stands for ``pip install`` where entry points are needed
in-process. tests/test_example_plugin.py installs a real package with pip.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hgo_common import aggregators, attacks, catalog, datasets, models, plugins
from tests.procs import ProcessGroup, console, free_port

GOOD = '''
import numpy as np
from hgo_common import aggregators, attacks
from hgo_common.datasets import Source
from hgo_common.models import MLP


class Tiny(MLP):
    """An MLP with one hidden layer of 8: a valid plug-in model."""

    def __init__(self, n_features, n_classes, l2=0.0):
        super().__init__(n_features, n_classes, (8,), l2)


def tiny_factory(*, n_features, n_classes):
    return Tiny(n_features, n_classes)


def _mean_of_middle(x, *, f):
    s = np.sort(x, axis=0)
    return s[f : x.shape[0] - f].mean(axis=0)


middle = aggregators.make_rule(
    _mean_of_middle, name="middle", coordinatewise=True, min_rows=lambda f: 2 * f + 1
)


def plain_rule(x, *, f):
    return np.median(x, axis=0)


flip = attacks.Attack(
    name="flip", kind="gradient", summary="-mean", fn=lambda h, *, n, f, rng: -h.mean(axis=0)
)


def _table(_dir):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, size=300)
    X = rng.normal(size=(300, 5)) + 3.0 * y[:, None]
    return X.astype(np.float32), y


three = Source(task="classification", n_classes=3, default_model="goodplug:Tiny", reader=_table)


def three_factory():
    return three
'''

BAD = """
import numpy as np
from hgo_common import aggregators, attacks
from hgo_common.datasets import Source
from hgo_common.models import MLP


class Base(MLP):
    def __init__(self, n_features, n_classes):
        super().__init__(n_features, n_classes, (4,), 0.0)


class NoGradient:
    name, dim, task, n_classes, layer_sizes, groups, l2 = "x", 3, "classification", 2, (2, 1), (3,), 0.0

    def __init__(self, n_features, n_classes):
        pass

    def init(self, rng):
        return np.zeros(3)


class ShortGradient(Base):
    def gradient(self, w, X, y, coords=None):
        g = super().gradient(w, X, y, coords)
        return g[:-1] if coords is None else g


class NanGradient(Base):
    def gradient(self, w, X, y, coords=None):
        g = super().gradient(w, X, y, coords)
        g[0] = np.nan
        return g


class WrongCoords(Base):
    def gradient(self, w, X, y, coords=None):
        g = super().gradient(w, X, y)
        return g if coords is None else g[: len(coords)]


class BadGroups(Base):
    def __init__(self, n_features, n_classes):
        super().__init__(n_features, n_classes)
        self.groups = (1, 2)


class Exploding(Base):
    def init(self, rng):
        raise RuntimeError("out of coffee")


def refuses(*, n_features, n_classes):
    raise ValueError(f"I only take 3 features, got {n_features}")


NOT_CALLABLE = 42

short_rule = aggregators.make_rule(lambda x, *, f: x.mean(axis=0)[:-1], name="short", coordinatewise=True)
nan_rule = aggregators.make_rule(
    lambda x, *, f: x.mean(axis=0) * np.nan, name="nan", coordinatewise=True
)
raising_rule = aggregators.make_rule(lambda x, *, f: x[100], name="raising", coordinatewise=True)
bad_rows = aggregators.make_rule(
    lambda x, *, f: x.mean(axis=0), name="rows", coordinatewise=True, min_rows=lambda f: 0
)

short_attack = attacks.Attack(
    name="short", kind="gradient", summary="", fn=lambda h, *, n, f, rng: h.mean(axis=0)[:2]
)
not_an_attack = lambda h: h  # noqa: E731


def _mismatch(_dir):
    return np.zeros((10, 3), np.float32), np.zeros(9)


def _nonfinite(_dir):
    X = np.ones((10, 3), np.float32)
    X[2, 1] = np.inf
    return X, np.zeros(10)


def _labels(_dir):
    return np.ones((10, 3), np.float32), np.arange(10)


def _crash(_dir):
    raise KeyError("column 'price'")


mismatch = Source(task="classification", n_classes=2, default_model="mlp", reader=_mismatch)
nonfinite = Source(task="classification", n_classes=2, default_model="mlp", reader=_nonfinite)
labels = Source(task="classification", n_classes=2, default_model="mlp", reader=_labels)
crash = Source(task="classification", n_classes=2, default_model="mlp", reader=_crash)
"""


@pytest.fixture(scope="module")
def plugdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("plugins")
    (d / "goodplug.py").write_text(GOOD)
    (d / "badplug.py").write_text(BAD)
    (d / "boomplug.py").write_text("raise RuntimeError('boom at import')\n")
    (d / "needsplug.py").write_text("import not_a_real_dependency_xyz\n")
    # A fake installed distribution: what pip leaves behind, entry points included.
    (d / "fakeplug_mod.py").write_text("from goodplug import Tiny, middle, flip, three\n")
    info = d / "fakeplug-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2.3\n")
    (info / "top_level.txt").write_text("fakeplug_mod\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [hgo.models]
            fake-tiny = fakeplug_mod:Tiny
            mlp = fakeplug_mod:Tiny
            [hgo.rules]
            fake-middle = fakeplug_mod:middle
            [hgo.attacks]
            fake-flip = fakeplug_mod:flip
            [hgo.datasets]
            fake-three = fakeplug_mod:three
            """
        )
    )
    return d


@pytest.fixture
def onpath(plugdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(plugdir))
    return plugdir


# ---- resolution -------------------------------------------------------------------------


def test_reference_model_trains_like_a_builtin(onpath: Path) -> None:
    m = models.create("goodplug:Tiny", n_features=5, n_classes=3)
    assert m.layer_sizes == (5, 8, 3) and m.dim == 5 * 8 + 8 + 8 * 3 + 3
    ds = datasets.load("goodplug:three", seed=1)
    assert (ds.n_features, ds.n_classes, ds.default_model) == (5, 3, "goodplug:Tiny")
    w = m.init(np.random.default_rng(0))
    for _ in range(100):
        w = w - 0.5 * m.gradient(w, ds.X_train, ds.y_train)
    assert m.evaluate(w, ds.X_test, ds.y_test)["accuracy"] > 0.9
    assert models.create("goodplug:tiny_factory", n_features=5, n_classes=3).dim == m.dim
    # dataset as a no-argument callable returning a Source
    assert datasets.load("goodplug:three_factory", seed=1).n_train == ds.n_train


def test_reference_rule_and_attack(onpath: Path) -> None:
    x = np.array([[1.0, 2.0], [2.0, 3.0], [100.0, -50.0], [3.0, 4.0], [2.5, 3.5]])
    rule = aggregators.get("goodplug:middle")
    assert rule.coordinatewise and rule.min_rows(2) == 5
    np.testing.assert_allclose(rule(x, f=1), [2.5, (2 + 3 + 3.5) / 3])  # trimmed 1 each side
    # composes behind a built-in pre-aggregation step, and a plain function is a rule too
    assert aggregators.get("nnm+goodplug:middle")(x, f=1).shape == (2,)
    np.testing.assert_allclose(aggregators.get("goodplug:plain_rule")(x, f=1), [2.5, 3.0])
    a = attacks.get("goodplug:flip")
    np.testing.assert_allclose(a(x, n=5, f=1, rng=np.random.default_rng(0)), -x.mean(axis=0))


def test_entry_points_are_found_listed_and_never_shadow_builtins(onpath: Path) -> None:
    assert models.create("fake-tiny", n_features=5, n_classes=3).layer_sizes == (5, 8, 3)
    assert aggregators.get("fake-middle").min_rows(1) == 3
    assert attacks.get("fake-flip").kind == "gradient"
    assert datasets.load("fake-three").n_classes == 3
    # "mlp" is also an entry point of fakeplug: the built-in wins, the listing says so
    assert models.create("mlp", n_features=5, n_classes=3).layer_sizes == (5, 30, 3)
    rows = {
        (r.kind, r.name): r for r in catalog.listing() if r.source != "entry point (shadowed by built-in)"
    }
    assert rows[("model", "fake-tiny")].source == "entry point"
    assert rows[("model", "fake-tiny")].distribution == "fakeplug"
    assert rows[("model", "fake-tiny")].version == "1.2.3"
    assert rows[("model", "mlp")].source == "built-in"
    assert any(r.name == "mlp" and "shadowed" in r.source for r in catalog.listing(["model"]))
    assert rows[("rule", "median")].source == "built-in"


def test_origin_names_the_distribution_and_version(onpath: Path) -> None:
    o = catalog.origin("model", "fake-tiny")
    assert o is not None and (o.distribution, o.version, o.target) == (
        "fakeplug",
        "1.2.3",
        "fakeplug_mod:Tiny",
    )
    assert o.requirement() == "fakeplug==1.2.3"
    ref = catalog.origin("model", "fakeplug_mod:Tiny")  # a reference into an installed package
    assert ref is not None and (ref.distribution, ref.version) == ("fakeplug", "1.2.3")
    loose = catalog.origin("model", "goodplug:Tiny")  # a module on sys.path, no distribution
    assert loose is not None and loose.distribution == "" and "goodplug" in loose.requirement()
    assert catalog.origin("model", "mlp") is None and catalog.origin("rule", "median") is None
    plugins.check_installed("model", "fake-tiny", "fakeplug", "1.2.3")
    with pytest.raises(
        plugins.PluginMissing, match=r"from plug-in fakeplug 9\.9.*install fakeplug==9\.9"
    ) as e:
        plugins.check_installed("model", "fake-tiny", "fakeplug", "9.9")
    assert e.value.requirement == "fakeplug==9.9"


def test_server_spec_carries_the_plugin_and_a_worker_rebuilds_it(onpath: Path) -> None:
    from hgo_server.config import ServerConfig, resolve
    from hgo_server.setup import load_setup
    from hgo_worker.compute import model_from_spec

    cfg = resolve(ServerConfig(dataset="fake-three", model="fake-tiny", q=2))
    setup = load_setup(cfg)
    spec = setup.spec
    assert (spec.model, spec.model_plugin, spec.model_plugin_version) == ("fake-tiny", "fakeplug", "1.2.3")
    assert (spec.dataset_plugin, spec.dataset_plugin_version) == ("fakeplug", "1.2.3")
    assert spec.order == "stratified" and spec.groups == tuple(setup.model.groups)
    with pytest.raises(plugins.PluginRefused, match=r"model 'fake-tiny'.*--allow-plugin 'fake-tiny'"):
        model_from_spec(spec)  # a worker loads a plug-in only when its operator allows it
    model = model_from_spec(spec, {"fake-tiny"})
    assert model.dim == spec.dim
    other = type(spec)(**{**spec.__dict__, "model_plugin_version": "2.0"})
    with pytest.raises(plugins.PluginMissing, match=r"install fakeplug==2\.0"):
        model_from_spec(other, {"fake-tiny"})
    builtin = load_setup(resolve(ServerConfig(dataset="digits", model="mlp", q=2))).spec
    assert builtin.model_plugin == "" and builtin.dataset_plugin == ""


# ---- bad plug-ins: a clear error naming the plug-in, at load time -----------------------

BAD_MODELS = [
    ("badplug:NoGradient", r"missing \['loss', 'gradient', 'predict', 'evaluate'\]"),
    ("badplug:ShortGradient", r"gradient\(\) returned shape \(\d+,\), expected \(\d+,\)"),
    ("badplug:NanGradient", r"gradient\(\) returned non-finite values"),
    ("badplug:WrongCoords", r"gradient\(coords=c\) must equal gradient\(\)\[c\]"),
    ("badplug:BadGroups", r"groups must be positive sizes summing to dim"),
    ("badplug:Exploding", r"init\(\) on 8 rows of 5 features raised RuntimeError: out of coffee"),
    ("badplug:refuses", r"refuses\(n_features=5, n_classes=3\) raised ValueError: I only take 3"),
    ("badplug:NOT_CALLABLE", r"expected a factory"),
    ("badplug:Missing", r"module 'badplug' has no attribute 'Missing'"),
    ("boomplug:X", r"importing 'boomplug' failed: RuntimeError: boom at import"),
    ("needsplug:X", r"needs module 'not_a_real_dependency_xyz', which is not installed"),
    ("nosuchplug:X", r"module 'nosuchplug' is not installed here"),
    ("not a reference:", r"expected a reference 'package.module:Name'"),
    ("no-such-model", r"unknown model 'no-such-model'.*'package.module:Name'"),
]


@pytest.mark.parametrize(("name", "message"), BAD_MODELS)
def test_bad_model_plugins(onpath: Path, name: str, message: str) -> None:
    with pytest.raises(plugins.PluginError, match=message) as e:
        models.create(name, n_features=5, n_classes=3)
    assert repr(name)[1:-1] in str(e.value) or name.startswith("not a")


BAD_RULES = [
    ("badplug:short_rule", r"returned shape \(6,\), expected \(7,\)"),
    ("badplug:nan_rule", r"returned non-finite values on finite input"),
    ("badplug:raising_rule", r"raised IndexError"),
    ("badplug:bad_rows", r"min_rows\(0\) must be an integer >= 1, got 0"),
    ("badplug:NOT_CALLABLE", r"expected an aggregators.Rule"),
    ("boomplug:rule", r"boom at import"),
    ("no-such-rule", r"unknown aggregation rule 'no-such-rule'"),
]


@pytest.mark.parametrize(("name", "message"), BAD_RULES)
def test_bad_rule_plugins(onpath: Path, name: str, message: str) -> None:
    with pytest.raises(plugins.PluginError, match=message) as e:
        aggregators.get(name)
    assert name in str(e.value)


BAD_ATTACKS = [
    ("badplug:short_attack", r"returned shape \(2,\), expected \(6,\)"),
    ("badplug:not_an_attack", r"expected a hgo_common.attacks.Attack, got function"),
    ("no-such-attack", r"unknown attack 'no-such-attack'"),
]


@pytest.mark.parametrize(("name", "message"), BAD_ATTACKS)
def test_bad_attack_plugins(onpath: Path, name: str, message: str) -> None:
    with pytest.raises(plugins.PluginError, match=message) as e:
        attacks.get(name)
    assert name in str(e.value)


BAD_DATASETS = [
    ("badplug:mismatch", r"y must have shape \(10,\), got \(9,\)"),
    ("badplug:nonfinite", r"X holds non-finite values"),
    ("badplug:labels", r"labels must be class ids in 0..1, got int64 values in \[0, 9\]"),
    ("badplug:crash", r"its reader raised KeyError"),
    (
        "badplug:NOT_CALLABLE",
        r"expected a hgo_common.datasets.Source \(or a callable returning one\), got int",
    ),
    ("no-such-data", r"unknown dataset 'no-such-data'"),
]


@pytest.mark.parametrize(("name", "message"), BAD_DATASETS)
def test_bad_dataset_plugins(onpath: Path, name: str, message: str) -> None:
    with pytest.raises(plugins.PluginError, match=message) as e:
        datasets.load(name)
    assert name in str(e.value)


# ---- the same at process start-up: exit 2, one line naming the plug-in, no traceback -----


def _env(plugdir: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(plugdir), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["hgo-server", "--model", "badplug:NanGradient"],
            "model 'badplug:NanGradient': gradient() returned non-finite",
        ),
        (["hgo-server", "--rule", "badplug:short_rule"], "rule 'badplug:short_rule': on an (3 x 7) matrix"),
        (["hgo-server", "--dataset", "badplug:labels"], "dataset 'badplug:labels': labels must be class ids"),
        (
            ["hgo-server", "--model", "boomplug:X"],
            "importing 'boomplug' failed: RuntimeError: boom at import",
        ),
        (["hgo-worker", "--attack", "badplug:short_attack"], "attack 'badplug:short_attack': on (5 x 6)"),
        (
            ["hgo-run", "--attack", "badplug:not_an_attack", "--attackers", "1"],
            "expected a hgo_common.attacks.Attack",
        ),
    ],
)
def test_bad_plugins_stop_the_processes_at_start_up(
    plugdir: Path, procs: ProcessGroup, argv: list[str], message: str
) -> None:
    extra = ["--port", "0"] if argv[0] == "hgo-server" else []
    extra += ["--server", "127.0.0.1:1"] if argv[0] == "hgo-worker" else []
    p = procs.start([*console(argv[0]), *argv[1:], *extra], name=argv[0], env=_env(plugdir))
    rc = procs.wait(p, timeout=60)
    log = procs.log(p)
    assert rc == 2, log
    assert message in log, log
    assert "Traceback" not in log, log


def test_worker_without_the_plugin_exits_2_naming_what_to_install(plugdir: Path, procs: ProcessGroup) -> None:
    # The server waits for 2 workers, so the one without the plug-in is welcomed (and
    # leaves) before training starts; two that have it then train to the end.
    port = free_port()
    server = procs.start(
        [*console("hgo-server"), "--port", str(port), "--dataset", "goodplug:three", "--q", "1",
         "--min-workers", "2", "--rounds", "8", "--tau", "250", "--no-early-close"],
        name="server",
        env=_env(plugdir),
    )  # fmt: skip
    # No PYTHONPATH: this worker does not have goodplug (its operator allows it all the same).
    allow = ["--allow-plugin", "goodplug:Tiny"]
    bare = procs.start(
        [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", "--reconnect-timeout", "30", *allow],
        name="bare",
    )
    rc = procs.wait(bare, timeout=60)
    log = procs.log(bare)
    assert rc == 2, log
    assert (
        "the server trains model 'goodplug:Tiny'" in log
        and "install a package providing module 'goodplug'" in log
    )
    assert "Traceback" not in log
    oks = [
        procs.start(
            [*console("hgo-worker"), "--server", f"127.0.0.1:{port}", *allow],
            name=f"ok{i}",
            env=_env(plugdir),
        )
        for i in range(2)
    ]
    for ok in oks:
        assert procs.wait(ok, timeout=90) == 0, procs.log(ok)
    assert procs.wait(server, timeout=30) == 0, procs.log(server)


def test_hgo_plugins_lists_and_checks(plugdir: Path, procs: ProcessGroup) -> None:
    p = procs.start([*console("hgo-plugins")], name="list", env=_env(plugdir))
    assert procs.wait(p, timeout=60) == 0
    out = procs.log(p)
    assert "fake-tiny" in out and "fakeplug_mod:Tiny" in out and "[fakeplug 1.2.3]" in out
    assert "median" in out and "built-in" in out
    c = procs.start(
        [*console("hgo-plugins"), "--kind", "model", "--check", "fake-tiny"], name="check", env=_env(plugdir)
    )
    assert procs.wait(c, timeout=60) == 0
    assert "fakeplug_mod:Tiny from fakeplug==1.2.3" in procs.log(c)
    bad = procs.start(
        [*console("hgo-plugins"), "--kind", "rule", "--check", "badplug:nan_rule"],
        name="bad",
        env=_env(plugdir),
    )
    assert procs.wait(bad, timeout=60) == 2
    assert "non-finite" in procs.log(bad)


def test_a_loaded_plugin_is_not_looked_up_again(onpath: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Byzantine worker resolves its attack every round: after the first load, neither the
    registries nor plugins.entry_points rescan the installed distributions (milliseconds
    each, enough to eat a short round's budget on a loaded machine)."""
    import importlib.metadata as md

    attacks.get("fake-flip")
    aggregators.get("fake-middle")
    plugins.entry_points("model")

    def boom(**_: object) -> None:
        raise AssertionError("entry points rescanned")

    monkeypatch.setattr(md, "entry_points", boom)
    for _ in range(3):
        assert attacks.get("fake-flip").kind == "gradient"
        assert aggregators.get("fake-middle").min_rows(1) == 3
    assert "fake-tiny" in plugins.entry_points("model")  # cached per sys.path
