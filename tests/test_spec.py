"""The run specification (hgo_common.spec): declared once, the same for every entry point.

Every setting of RunSpec and Population is a declaration (kind, help, unit, constraint);
these tests check that each one reaches the server's parser, hgo-run's parser, the
``--config`` TOML file and the scenario reader with no code of its own, that the server and
the simulator get equal round-driver settings from one spec, and that the drifts the
issue "Declare a run once" listed are gone.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hgo_common import rounds
from hgo_common.errors import HGOError, SpecError
from hgo_common.spec import Deadline, Population, Quorum, RunSpec, build_run, driver_settings, forms
from hgo_common.spec.declare import declared
from hgo_lab import cluster, simulator
from hgo_lab.experiment import load_scenario
from hgo_lab.experiment.netmode import server_config as net_server_config
from hgo_server import config as server_config

# A value other than the default for every RunSpec setting, valid together.
NON_DEFAULT: dict[str, Any] = {
    "dataset": "breast-cancer", "data_dir": "/nonexistent-but-unused", "max_train": 300,
    "test_fraction": 0.25, "partition": "classes:1", "model": "logistic", "hidden": (8, 4), "l2": 0.01,
    "seed": 7, "secret_seed": 11,
    "data_seed": 9, "algorithm": "sgd", "rule": "median", "f": 1, "allow_unsafe": True,
    "q": 5, "v": Quorum.fixed(4),
    "row_bound": "norm:100", "order": "flat", "tau": Deadline.of_ms(250.0), "tau_target": 0.7,
    "tau_min": 20.0, "tau_max": 900.0, "early_close": False, "lr": 0.3, "lr_schedule": "inv-sqrt-block",
    "rounds": 12, "eval_every": 3,
}  # fmt: skip


def test_the_non_default_table_covers_every_setting() -> None:
    names = [s.name for s, _ in declared(RunSpec)]
    assert sorted(names) == sorted(NON_DEFAULT)
    defaults = RunSpec()
    for name, value in NON_DEFAULT.items():
        assert getattr(defaults, name) != value, name


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_every_setting_reaches_every_parser_and_the_scenario_reader() -> None:
    server_flags = _flags(server_config.build_parser())
    run_flags = _flags(cluster.build_parser())
    for s, _ in declared(RunSpec):
        assert s.flag_name in server_flags, s.name
        assert s.flag_name in run_flags, s.name
        assert hasattr(server_config.ServerConfig(), s.name)
        assert hasattr(simulator.SimConfig(), s.name)
    for s, _ in declared(Population):
        if s.flag and s.name not in cluster.SIM_ONLY:
            assert s.flag_name in run_flags, s.name
        assert hasattr(simulator.SimConfig(), s.name)


def test_every_setting_round_trips_through_the_server_config_file(tmp_path: Path) -> None:
    cfg = server_config.resolve(server_config.ServerConfig(**NON_DEFAULT))
    path = tmp_path / "server.toml"
    path.write_text(server_config.to_toml(cfg))
    back = server_config.parse_args(["--config", str(path)])
    assert back == cfg
    assert back.run_spec() == RunSpec(**NON_DEFAULT)


def test_every_setting_reaches_the_simulator_from_a_scenario_and_net_mode_passes_it_on(
    tmp_path: Path,
) -> None:
    table = forms.to_mapping(RunSpec(**NON_DEFAULT))
    table.pop("data_dir")  # resolved against the scenario's place
    lines = ["format = 2", "[base]", *(f"{k} = {forms.toml_value(v)}" for k, v in table.items()),
             "n = 6", '[[variant]]\nlabel = "a"']  # fmt: skip
    path = tmp_path / "all.toml"
    path.write_text("\n".join(lines) + "\n")
    cfg = load_scenario(path).variants[0].config
    want = {**NON_DEFAULT, "data_dir": None}
    assert RunSpec(**RunSpec.values_of(cfg)) == RunSpec(**want)
    srv = net_server_config(cfg)  # --mode net: the spec itself
    assert srv.run_spec() == RunSpec(**want)
    assert (srv.min_workers, srv.num_shards) == (6, 6)


def test_server_and_simulator_get_equal_driver_settings_from_one_spec() -> None:
    spec = RunSpec(**{**NON_DEFAULT, "data_dir": None, "tau": "auto", "v": "auto", "algorithm": "hgo"})
    server = server_config.resolve(server_config.ServerConfig(**RunSpec.values_of(spec)))
    sim = simulator.SimConfig(**RunSpec.values_of(spec), n=6)
    from hgo_server.setup import load_setup

    srv_settings = driver_settings(server, load_setup(server).run, server.q_for())
    sim_run = simulator.Simulation(sim)
    assert srv_settings == sim_run.driver.settings
    assert srv_settings.round_cfg.row_bound == rounds.RowBound.parse("norm:100")  # the row bound reaches both
    assert srv_settings.auto_tau is not None and srv_settings.tau_ms == 900.0


def test_the_row_bound_applies_in_the_simulator() -> None:
    base = dict(model="logistic", dataset="breast-cancer", n=4, rounds=3, eval_every=1, tau=100.0)
    loose = simulator.run(simulator.SimConfig(**base))
    tight = simulator.run(simulator.SimConfig(**base, row_bound="coord:1e-4"))
    step = np.abs(
        tight.weights - rounds.initial_weights(simulator.Simulation(simulator.SimConfig(**base)).model, 0)
    )
    assert not np.array_equal(loose.weights, tight.weights)
    assert float(step.max()) <= 3 * 0.1 * 1e-4 + 1e-12  # 3 rounds of lr * bound at most


def test_one_default_for_early_close_and_the_quorum() -> None:
    assert server_config.ServerConfig().early_close is simulator.SimConfig().early_close is True
    for q, rule, f in ((10, "median", 2), (80, "krum", 10), (3, "average", 0)):
        assert Quorum().resolve(q, rule, f) == rounds.default_quorum(q, rule, f)
        assert Quorum.parse("auto").resolve(q, rule, f) == rounds.auto_quorum(q, rule, f)


def test_the_model_is_built_once_and_checked_against_the_dataset() -> None:
    with pytest.raises(SpecError, match="regression"):
        simulator.SimConfig(model="logistic", dataset="diabetes", n=2) and simulator.Simulation(
            simulator.SimConfig(model="logistic", dataset="diabetes", n=2)
        )
    spec = RunSpec(dataset="breast-cancer")
    run = build_run(spec, 3)
    assert run.model_name == "logistic" and len(run.shards) == 3 and run.order == "flat"


def test_the_simulator_and_hgo_run_place_attackers_and_seed_workers_alike() -> None:
    sim = simulator.Simulation(simulator.SimConfig(dataset="breast-cancer", n=12, attackers=3, attack="foe",
                                                   f=3, rule="median", seed=4))  # fmt: skip
    cc = cluster.ClusterConfig.make(dataset="breast-cancer", workers=12, byzantine=3, rule="median", seed=4)
    assert cc.byzantine_indices() == [int(i) for i in np.flatnonzero(sim.byzantine)]
    profs = cc.worker_profiles()
    for i in range(12):
        sess = cluster.worker_session(cc, i, profs[i])
        assert sess["seed"] == sim.worker_seeds[i] and sess["rate"] == sim.rates[i]


def test_f_is_tolerated_and_attackers_are_present() -> None:
    cfg = simulator.SimConfig(dataset="breast-cancer", n=10, attackers=3, attack="foe", f=1, rule="median")
    assert (cfg.f, cfg.attackers, int(simulator.Simulation(cfg).byzantine.sum())) == (1, 3, 3)
    with pytest.raises(SpecError, match="need an attack"):
        simulator.SimConfig(n=4, attackers=1)


def test_old_spellings_still_work_with_a_note(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cc = cluster.ClusterConfig.make(byzantine=2, workers=5, rule="median")
        raw = forms.coerce(Population, {"byzantine": 2})
    assert cc.population.attackers == 2 and cc.spec.f == 2 and raw == {"attackers": 2}
    assert any("old spelling" in str(w.message) and "attackers" in str(w.message) for w in seen)
    legacy = tmp_path / "legacy.toml"  # format 1: f = attackers (and tolerated), tau_ms, tau_auto
    legacy.write_text('[base]\ndataset = "breast-cancer"\nn = 10\nf = 2\nattack = "foe"\nrule = "median"\n'
                      'tau_ms = 300\n[[variant]]\nlabel = "a"\n[[variant]]\nlabel = "b"\nrule_f = 1\n'
                      'tau_auto = true\n')  # fmt: skip
    a, b = (v.config for v in load_scenario(legacy).variants)
    assert (a.attackers, a.f, a.tau, a.early_close) == (2, 2, Deadline.of_ms(300.0), False)
    assert (b.attackers, b.f, b.tau.auto, b.tau_max) == (2, 1, True, 300.0)


@pytest.mark.parametrize(
    ("raw", "needles"),
    [
        ({"q": 0}, ["--q", ">= 1", "got 0"]),
        ({"q": "many"}, ["--q", "integer", "'many'"]),
        ({"tau": "5h"}, ["--tau", "'5h'", "2s"]),
        ({"v": "half"}, ["--v", "'half'", "auto"]),
        ({"lr_schedule": "cosine"}, ["--lr-schedule", "'cosine'", "inv-sqrt-block"]),
        ({"quorom": 3}, ["unknown keys", "quorom"]),
        ({"test_fraction": 1.5}, ["--test-fraction", "(0, 1)", "1.5"]),
        ({"q": 4, "v": 3, "rule": "median", "f": 2}, ["needs at least 5", "quorum v is 3"]),
    ],
)
def test_errors_name_the_value_and_what_was_expected(raw: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        RunSpec.from_mapping(raw)
    assert isinstance(info.value, HGOError) and isinstance(info.value, ValueError)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_deadline_and_quorum_are_types_not_sentinels() -> None:
    assert Deadline.parse("auto").auto and Deadline.parse("inf").infinite and Deadline.parse("2s").ms == 2000
    assert Deadline.parse(60).to_value() == 60.0 and Deadline.parse("inf").to_value() == math.inf
    assert Quorum.parse(None).kind == "default" and Quorum.parse("3") == Quorum.fixed(3)
    for bad in ("0", -1, "half", 2.5, True):
        with pytest.raises(SpecError):
            Quorum.parse(bad)


def test_the_reference_table_lists_every_setting() -> None:
    table = forms.markdown_table(RunSpec, Population)
    for cls in (RunSpec, Population):
        for s, _ in declared(cls):
            assert f"`{s.name}`" in table
    assert dataclasses.is_dataclass(RunSpec)


def test_hgo_run_tolerates_its_attackers_only_with_a_robust_rule() -> None:
    assert cluster.ClusterConfig.make(byzantine=2, workers=7, rule="median").spec.f == 2
    assert cluster.ClusterConfig.make(byzantine=2, workers=7).spec.f == 0  # average claims nothing
    with pytest.raises(SpecError, match="--allow-unsafe"):
        cluster.ClusterConfig.make(byzantine=2, workers=7, f=2).validate()
    with pytest.raises(SpecError, match="q - f = 3"):
        RunSpec.from_mapping({"q": 5, "f": 2, "rule": "median", "v": 5})  # median needs 5, 3 honest


def test_the_settings_reference_in_the_docs_is_generated_and_current() -> None:
    from hgo_common.spec.__main__ import render

    doc = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
    assert doc.read_text(encoding="utf-8") == render(), "run: python -m hgo_common.spec > docs/settings.md"


def test_per_unit_blocks_are_selectable_on_the_server() -> None:
    """--order units (paper appendix C.3) reaches the TrainingSpec the workers expand C_k from."""
    from hgo_common import order
    from hgo_server.setup import load_setup

    argv = ["--order", "units", "--model", "mlp", "--hidden", "16", "--dataset", "digits"]
    cfg = server_config.parse_args(argv)
    setup = load_setup(cfg)
    assert setup.spec.order == "units" and sum(setup.spec.groups) == setup.spec.dim
    c = order.make_order(123, setup.spec.dim, setup.spec.order, setup.spec.groups)
    assert sorted(c.tolist()) == list(range(setup.spec.dim))
    assert not np.array_equal(c, order.make_order(123, setup.spec.dim, "stratified", setup.spec.groups))
