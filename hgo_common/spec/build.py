"""One path from a run specification to a running round.

:func:`build_run` loads what a run needs before its first round — dataset, model, shards,
w_0, parameter groups — the one place this is done for ``hgo-server``, the simulator and
the experiment tools (per-class accuracy, the centralized reference).
:func:`driver_settings` gives :class:`hgo_common.driver.RoundDriver` its settings from the
same spec, so the server and the simulator cannot drift apart (tests/test_spec.py checks
that they get equal settings from one spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hgo_common.errors import SpecError

from .run import RunSpec


@dataclass
class Run:
    """What a run loads before its first round.

    Attributes
    ----------
    dataset : hgo_common.datasets.Dataset
    model : a model of ``hgo_common.models`` (or a plug-in)
    model_name : str
        The model actually built (the spec's, or the dataset's default).
    shards : list of ndarray
        Training-row indices of each shard (``rounds.shard_split``).
    w0 : ndarray of shape (d,)
        The initial weights (``rounds.initial_weights(model, seed)``).
    groups : tuple of int
        Parameter-group sizes (layers) of the model; one group for linear models.
    order : str
        The coordinate order kind C_k is expanded with (``flat`` when one group).
    data_warning : str or None
        Set when a file dataset was missing and a bundled one used instead.
    """

    dataset: Any
    model: Any
    model_name: str
    shards: list[np.ndarray]
    w0: np.ndarray
    groups: tuple[int, ...]
    order: str
    data_warning: str | None = None

    @property
    def d(self) -> int:
        return int(self.model.dim)


def n_classes_of(ds: Any) -> int:
    """Classes the model is built for: the dataset's, at least 2 (a regression dataset says 0)."""
    return max(int(ds.n_classes or 0), 2)


def build_model(spec: RunSpec, ds: Any) -> tuple[Any, str]:
    """The spec's model for dataset ``ds`` (``spec.model`` or the dataset's default) and its name.

    Raises SpecError naming model and dataset when they cannot go together.
    """
    from hgo_common import models

    name = spec.model or ds.default_model
    try:
        model = models.create(
            name, n_features=int(ds.n_features), n_classes=n_classes_of(ds), hidden=spec.hidden, l2=spec.l2
        )
    except ValueError as exc:
        raise SpecError(f"--model {name!r} on --dataset {spec.dataset!r}: {exc}") from None
    if model.task != ds.task:
        raise SpecError(
            f"--model {name!r} is a {model.task} model but --dataset {spec.dataset!r} is {ds.task}"
        )
    return model, name


def require_dataset(name: str) -> None:
    """Refuse ``--dataset none`` where a run must build its own shards (SpecError)."""
    if name == "none":
        from hgo_common import datasets

        raise SpecError(
            "dataset 'none' means the devices hold the data (hgo-server --dataset none, workers with "
            "--data PATH): a run that builds its own shards (the simulator, hgo-run, hgo-experiment) "
            f"needs a dataset; expected one of {datasets.names()}"
        )


def build_run(spec: RunSpec, num_shards: int, *, dataset: Any = None, data_warning: str | None = None) -> Run:
    """Dataset, model, shards and w_0 of ``spec`` split into ``num_shards`` shards.

    Reproducible from the spec alone, so a worker given ``--shard i/n`` rebuilds its shard:
    ``datasets.load(dataset, data_dir=..., seed=split_seed, test_fraction=..., max_train=...)``
    then ``rounds.shard_split(y_train, num_shards, partition, seed)``; w_0 is
    ``rounds.initial_weights(model, seed)``. ``dataset``: an already loaded dataset (the
    simulator's cache, with its fallback note in ``data_warning``).
    """
    from hgo_common import datasets, rounds

    if dataset is None:
        require_dataset(spec.dataset)
        try:
            dataset = datasets.load(
                spec.dataset,
                data_dir=spec.data_dir,
                seed=spec.split_seed,
                test_fraction=spec.test_fraction,
                max_train=spec.max_train,
            )
        except ValueError as exc:
            raise SpecError(f"--dataset {spec.dataset!r}: {exc}") from None
    model, name = build_model(spec, dataset)
    try:
        shards = rounds.shard_split(dataset.y_train, int(num_shards), spec.partition, spec.seed)
    except ValueError as exc:
        raise SpecError(f"--num-shards {num_shards} / --partition {spec.partition!r}: {exc}") from None
    groups = tuple(int(g) for g in model.groups)
    order = spec.order if len(groups) > 1 else "flat"
    w0 = rounds.initial_weights(model, spec.seed)
    return Run(dataset, model, name, shards, w0, groups, order, data_warning)


def round_config(spec: RunSpec, d: int, q: int) -> Any:
    """The round rule (``rounds.RoundConfig``) of ``spec`` for a model of ``d`` coordinates."""
    from hgo_common import rounds

    return rounds.RoundConfig(
        d=int(d),
        v=spec.quorum_for(q),
        rule=spec.rule,
        f=spec.f,
        lr=spec.lr,
        lr_schedule=spec.lr_schedule,
        algorithm=spec.algorithm,
        row_bound=rounds.RowBound.parse(spec.row_bound_text),
    )


def driver_settings(spec: RunSpec, run: Run, q: int, secret_seed: int | None = None) -> Any:
    """The round driver's settings (``driver.RunSettings``) for ``spec`` with ``q`` sampled workers.

    The driver's streams (sampling, C_k seeds, aggregation randomness) come from
    ``secret_seed``, else the spec's ``secret_seed``, else its public ``seed`` (the
    simulator: nothing travels). ``hgo-server`` passes a secret it drew at start, so a worker
    knowing the run's public seed cannot tell who is sampled when nor any future C_k.
    """
    from hgo_common.deadline import AutoTau
    from hgo_common.driver import RunSettings

    auto = AutoTau(spec.tau_target, spec.tau_min, spec.tau_max) if spec.tau.auto else None
    return RunSettings(
        seed=_secret(spec, secret_seed),
        rounds=spec.rounds,
        eval_every=spec.eval_every,
        q=q,
        tau_ms=spec.tau_bound_ms,
        order_kind=run.order,
        groups=run.groups,
        round_cfg=round_config(spec, run.d, q),
        auto_tau=auto,
    )


def _secret(spec: RunSpec, given: int | None) -> int:
    if given is not None:
        return int(given)
    return int(spec.seed if spec.secret_seed is None else spec.secret_seed)


SIM_STREAM = 0x48474F  # "HGO": the population's seed streams (placement, rates, attacks, workers)
RATE_STREAM = 0x52415445  # "RATE": rates of a named rate model other than "hgo"


@dataclass(frozen=True)
class Devices:
    """Who is who in a population, drawn once from the run seed: the one place the simulator
    and the launchers (``hgo-run``, ``hgo-experiment --mode net``) decide it.

    Attributes
    ----------
    profiles : list of str
        Each worker's hardware profile (``profiles.assign(n, mix)``, sorted weak first).
    rates : list of float
        λ_i: the population's ``rates``, or one draw per worker from its profile's
        distribution in the population's rate model.
    byzantine : ndarray of bool, shape (n,)
        The ``attackers`` Byzantine workers, a uniform draw among the n.
    seeds : list of int
        Worker i's own seed (its mini-batches: ``local.round_rng(seeds[i], k, salt=i)``).
    attack_seed : numpy.random.SeedSequence
        The attacks' stream (label poisoning, estimates).
    """

    profiles: list[str]
    rates: list[float]
    byzantine: np.ndarray
    seeds: list[int]
    attack_seed: np.random.SeedSequence


def devices(pop: Any, seed: int, *, profile_names: list[str] | None = None) -> Devices:
    """The devices of population ``pop`` for run seed ``seed`` (see :class:`Devices`).

    ``profile_names`` overrides the mix's profiles (a launcher's explicit list).
    """
    from hgo_common import profiles

    n = int(pop.n)
    ss = np.random.SeedSequence([int(seed) % 2**32, SIM_STREAM])
    s_byz, s_rate, s_attack, s_workers = ss.spawn(4)
    names = list(profile_names) if profile_names is not None else list(profiles.assign(n, pop.mix))
    if pop.rates is not None:
        rates = [float(r) for r in pop.rates]
    elif pop.rate_model == "hgo":
        rng = np.random.default_rng(s_rate)
        rates = [float(profiles.draw_rate(p, rng)) for p in names[:n]]
    else:
        rng = np.random.default_rng([int(seed) % 2**32, RATE_STREAM])
        rates = [float(r) for r in profiles.draw_rates(names[:n], rng, pop.rate_model)]
    byzantine = np.zeros(n, dtype=bool)
    if pop.attackers:
        byzantine[np.random.default_rng(s_byz).permutation(n)[: pop.attackers]] = True
    seeds = [int(x) for x in s_workers.generate_state(n)]
    return Devices(names, rates, byzantine, seeds, s_attack)
