"""The run specification: what one training run is, declared once.

:class:`RunSpec` holds what fixes the run itself — data, model, round rule, deadline,
schedule — and is the same object for ``hgo-server``, the simulator, ``hgo-run`` and
``hgo-experiment`` (both modes). :class:`Population` holds who takes part — n devices,
their hardware mix or rates, their batch and budget policy, and the attackers among them
— which the simulator and the launchers need and a server only observes.

Names with one meaning each (docs/design.md "The run specification"):

* ``f`` is the number of Byzantine workers the *rule tolerates* (the paper's f);
  ``attackers`` is how many Byzantine workers a simulated or launched population *has*.
* ``v`` is the quorum (:class:`~hgo_common.spec.types.Quorum`); ``tau`` the deadline
  (:class:`~hgo_common.spec.types.Deadline`).
* Parameter groups (a model's layers) are ``groups``; B_k is the *block*.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hgo_common.errors import SpecError

from . import forms
from .declare import (
    BOOL,
    DEADLINE,
    DURATION,
    FLOAT,
    FLOATS,
    INT,
    INTS,
    MIX,
    QUORUM,
    STR,
    TABLE,
    Check,
    Choice,
    above,
    at_least,
    positive_finite,
    setting,
    within,
)
from .types import Deadline, Quorum

SERVER_DEFAULT_Q = 10
"""q for a server that is not told it (a server has no population to sample all of)."""


def _algorithms() -> list[str]:
    from hgo_common import rounds

    return list(rounds.ALGORITHMS)


def _schedules() -> list[str]:
    from hgo_common import rounds

    return list(rounds.LR_SCHEDULES)


def _orders() -> list[str]:
    from hgo_common import order

    return list(order.ORDERS)


def _policies() -> list[str]:
    from hgo_common import budget

    return list(budget.POLICIES)


def _rate_models() -> list[str]:
    from hgo_common import profiles

    return list(profiles.RATE_MODELS)


def _default_row_bound() -> str:
    from hgo_common import rounds

    return str(rounds.DEFAULT_ROW_BOUND)


_WIDTHS = Check(lambda h: bool(h) and all(x >= 1 for x in h), "be positive layer widths")
_SEED = within(0, 2**32 - 1)


@dataclass(frozen=True)
class RunSpec:
    """What one run is: data, model, round rule, deadline and schedule (docs/design.md).

    Build it with :meth:`from_mapping` (a file, a scenario table, a program) or a parser
    made by :func:`hgo_common.spec.forms.add_arguments`; :meth:`checked` validates every
    declared range and the cross-field rules and fills nothing in: dependent values
    (the quorum as a number) are computed by :meth:`quorum_for`.
    """

    # -- data and model
    dataset: str = setting(
        "digits",
        STR,
        "dataset name, package.module:Name or an installed plug-in; none (hgo-server): no training data, "
        "workers train on their own (hgo-worker --data; --features, --classes give the model's shape)",
    )
    data_dir: str | None = setting(
        None,
        STR,
        "directory with the file-based datasets (mnist, phishing, boston, cifar10); bundled "
        "scikit-learn datasets need none",
        metavar="DIR",
    )
    max_train: int | None = setting(
        None, INT, "use at most this many training examples", check=at_least(1), default_text="all"
    )
    test_fraction: float = setting(
        0.2,
        FLOAT,
        "share of the data held out as the test split",
        check=Check(lambda x: 0 < x < 1, "be in (0, 1)"),
    )
    partition: str = setting("iid", STR, "iid | classes:K | dirichlet:ALPHA: how the training set is split")
    model: str | None = setting(
        None,
        STR,
        "linear | logistic | svm | mlp | cnn, cnn-cifar (torch extra) | package.module:Name | "
        "an installed plug-in",
        default_text="the dataset's default model",
    )
    hidden: tuple[int, ...] = setting((30,), INTS, "mlp hidden layer widths, comma-separated", check=_WIDTHS)
    l2: float | None = setting(
        None,
        FLOAT,
        "l2 regularization",
        check=Check(lambda x: x >= 0 and x < float("inf"), "be a finite number >= 0"),
        default_text="the model's: 1e-4 for svm, 0 otherwise",
    )
    seed: int = setting(0, INT, "run seed: model init, orders, sampling, partition", check=_SEED)
    secret_seed: int | None = setting(
        None,
        INT,
        "seed of the server's own randomness: who is sampled, C_k, aggregation randomness; never sent to "
        "workers (C_k of round k is revealed only in round k's task)",
        check=_SEED,
        secret=False,
        default_text="drawn at start by hgo-server (in its log and checkpoints); --seed in the simulator",
    )
    data_seed: int | None = setting(
        None, INT, "seed of the train/test split", check=_SEED, default_text="--seed"
    )
    # -- the round rule
    algorithm: str = setting("hgo", Choice(_algorithms), "hgo | sgd (the paper's SGD baselines)")
    rule: str = setting(
        "average",
        STR,
        "aggregation rule, e.g. average, median, nnm+krum, package.module:Name or an installed plug-in",
    )
    f: int = setting(0, INT, "Byzantine workers the rule must tolerate (the paper's f)", check=at_least(0))
    allow_unsafe: bool = setting(
        False,
        BOOL,
        "run a configuration refused as unsafe: a rule without a robustness guarantee with f > 0, or a "
        "quorum that f Byzantine workers can deny (q - f < v); for experiments that study exactly that",
    )
    q: int | None = setting(
        None,
        INT,
        "workers sampled per round",
        check=at_least(1),
        default_text=f"every worker (simulator, hgo-run); {SERVER_DEFAULT_Q} for hgo-server",
    )
    v: Quorum = setting(
        Quorum(),
        QUORUM,
        "quorum: the block is the v-th longest prefix; an integer, or auto: the paper's floor(f/0.5)+1",
        default_text="max(ceil(q/2), what the rule needs)",
    )
    row_bound: str = setting(
        "",
        STR,
        "the most one row may contribute before aggregation: coord:B, norm:B, off, or a bound "
        "relative to the round's rows (docs/reliability.md)",
        default_text="median-norm:10 (rounds.DEFAULT_ROW_BOUND)",
    )
    order: str = setting(
        "stratified",
        Choice(_orders),
        "coordinate order C_k: flat, or stratified over the "
        "model's parameter groups (paper appendix C.3; flat for one group)",
    )
    # -- deadline
    tau: Deadline = setting(
        Deadline(),
        DEADLINE,
        "round deadline tau: ms (a bare number), or 250ms, 2s, "
        "inf, or auto: chosen each round to meet --tau-target",
    )
    tau_target: float = setting(
        0.5,
        FLOAT,
        "--tau auto: the block fraction b_v/d to reach",
        check=Check(lambda x: 0 < x <= 1, "be in (0, 1]"),
    )
    tau_min: float = setting(10.0, DURATION, "--tau auto: the shortest deadline", check=above(0))
    tau_max: float = setting(
        1000.0,
        DURATION,
        "--tau auto: the longest deadline",
        check=Check(lambda x: 0 < x < float("inf"), "be a finite duration > 0"),
    )
    early_close: bool = setting(
        True,
        BOOL,
        "close a round as soon as every sampled worker is finished "
        "(off: every round lasts exactly tau, the paper's round)",
    )
    # -- schedule
    lr: float = setting(0.1, FLOAT, "learning rate gamma", check=positive_finite())
    lr_schedule: str = setting(
        "constant", Choice(_schedules), "constant | inv-sqrt-block (gamma/sqrt|B_k|, the paper's suggestion)"
    )
    rounds: int = setting(100, INT, "training rounds", check=at_least(1))
    eval_every: int = setting(
        10,
        INT,
        "evaluate on the test split every N rounds; 0 = at the end only",
        check=at_least(0, "0: only at the end"),
    )

    def __post_init__(self) -> None:
        normalize_loose(self)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, where: str = "") -> RunSpec:
        """A checked spec from ``{key: value}`` (unknown keys refused, naming them)."""
        return cls(**forms.coerce(cls, raw, where=where)).checked(where=where)

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)

    @classmethod
    def values_of(cls, obj: Any) -> dict[str, Any]:
        """The run-specification settings of ``obj`` (a RunSpec or a config built on one)."""
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}

    def to_mapping(self, *, skip_defaults: bool = True) -> dict[str, Any]:
        return forms.to_mapping(self, skip_defaults=skip_defaults)

    # ------------------------------------------------------------------ derived values

    @property
    def tau_bound_ms(self) -> float:
        """The longest a round may last: the fixed tau, inf, or --tau-max for auto."""
        return self.tau.bound_ms(self.tau_max)

    @property
    def tau_ms(self) -> float:
        """Same as :attr:`tau_bound_ms` (the name the round code reads)."""
        return self.tau.bound_ms(self.tau_max)

    @property
    def tau_auto(self) -> bool:
        return self.tau.auto

    @property
    def row_bound_text(self) -> str:
        return self.row_bound or _default_row_bound()

    @property
    def split_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def q_for(self, n: int | None = None) -> int:
        """q: as given, else every worker of a population of ``n``, else the server's default."""
        if self.q is not None:
            return self.q
        return n if n is not None else SERVER_DEFAULT_Q

    def quorum_for(self, q: int) -> int:
        """v as an integer for ``q`` sampled workers."""
        return self.v.resolve(q, self.rule, self.f)

    # ------------------------------------------------------------------ validation

    def checked(self, *, where: str = "", n: int | None = None) -> RunSpec:
        """Every declared range, then the rules between settings; returns self.

        ``n``: the population size when known (simulator, launchers), for ``q <= n``.
        """
        from hgo_common import aggregators, datasets, rounds

        forms.check(self, where=where)
        try:
            rule = aggregators.get(self.rule)
        except ValueError as exc:
            raise SpecError(f"{where}--rule {self.rule!r}: {exc}") from None
        _check_names(self, where)
        try:
            datasets.parse_partition(self.partition)
        except ValueError as exc:
            raise SpecError(f"{where}--partition {self.partition!r}: {exc}") from None
        try:
            rounds.RowBound.parse(self.row_bound_text)
        except ValueError as exc:
            raise SpecError(f"{where}--row-bound: {exc}") from None
        q = self.q_for(n)
        if n is not None and not 1 <= q <= n:
            raise SpecError(f"{where}--q must be in [1, n={n}], got {q}")
        v = self.quorum_for(q)
        if not 1 <= v <= q:
            raise SpecError(f"{where}--v must be in [1, q={q}], got {v}")
        need = rule.min_rows(self.f)
        if need > v:
            raise SpecError(
                f"{where}--rule {self.rule} with --f {self.f} needs at least {need} rows per coordinate, "
                f"but the quorum v is {v}; raise --v (and --q) to >= {need} or lower --f"
            )
        if not self.allow_unsafe:
            _check_safety(self, rule, q, v, where)
        if self.tau.auto:
            if self.algorithm != "hgo":
                raise SpecError(
                    f"{where}--tau auto adapts HGO's deadline; --algorithm {self.algorithm} takes a fixed "
                    "--tau (or inf)"
                )
            if not self.tau_min <= self.tau_max:
                raise SpecError(
                    f"{where}--tau auto needs 0 < --tau-min <= --tau-max < inf (ms), got --tau-min "
                    f"{self.tau_min:g} --tau-max {self.tau_max:g}"
                )
        return self


def robust(rule: Any, f: int) -> bool:
    """Whether ``rule`` claims a guarantee against ``f`` Byzantine rows: it needs more rows as f
    grows (median 2f+1, Krum 2f+3, ...). A rule that needs no more rows for f than for 0
    (average, and compositions ending in it without a robust first stage) claims none."""
    return f == 0 or int(rule.min_rows(f)) > int(rule.min_rows(0))


def _check_safety(spec: RunSpec, rule: Any, q: int, v: int, where: str) -> None:
    """Refuse what lets f Byzantine identities break or stall the run (issue 20, break 2)."""
    f = spec.f
    if not robust(rule, f):
        raise SpecError(
            f"{where}--rule {spec.rule} has no robustness guarantee, yet --f {f} says up to {f} workers may "
            "be Byzantine: one of them can move the model anywhere; use a robust rule (median, "
            "trimmed-mean, krum, nnm+average, ...), or confirm with --allow-unsafe (allow_unsafe = true)"
        )
    need = v if spec.algorithm == "hgo" else max(1, int(rule.min_rows(f)))
    if f and q - f < need:
        what = "quorum v" if spec.algorithm == "hgo" else "complete gradients the rule needs"
        raise SpecError(
            f"{where}--q {q}, --f {f}: q - f = {q - f} honest workers are fewer than the {what} ({need}), so "
            f"f Byzantine workers that send nothing (or one value late) can deny every round its quorum; "
            f"raise --q to >= {need + f}, lower --v to <= {q - f}, or confirm with --allow-unsafe"
        )


def normalize_loose(cfg: Any) -> None:
    """Typed values for the loose spellings a program may pass (``tau=60``, ``v="auto"``,
    lists for tuples); set in place once, at construction (the dataclasses are frozen)."""
    set_ = object.__setattr__
    if not isinstance(cfg.tau, Deadline):
        set_(cfg, "tau", Deadline.parse(cfg.tau))
    if not isinstance(cfg.v, Quorum):
        set_(cfg, "v", Quorum.parse(cfg.v))
    for key in ("hidden", "rates", "mix"):
        if isinstance(getattr(cfg, key, None), list):
            set_(cfg, key, tuple(getattr(cfg, key)))


def _check_names(spec: RunSpec, where: str) -> None:
    """Model and dataset names against their registries (plug-ins are loaded later)."""
    from hgo_common import datasets, models, plugins

    def known(kind: str, name: str, builtins: list[str]) -> bool:
        return name in builtins or plugins.is_reference(name) or name in plugins.entry_points(kind)

    if spec.model is not None and not known("model", spec.model, models.names()):
        raise SpecError(
            f"{where}--model must be one of {models.names()}, a 'package.module:Name' reference or an "
            f"installed plug-in (hgo-plugins lists them), got {spec.model!r}"
        )
    if spec.dataset != "none" and not known("dataset", spec.dataset, datasets.names()):
        raise SpecError(
            f"{where}--dataset must be one of {datasets.names()}, none (hgo-server), a 'package.module:Name' "
            f"reference or an installed plug-in (hgo-plugins lists them), got {spec.dataset!r}"
        )


@dataclass(frozen=True)
class Compute:
    """How one device spends its round (Algorithm 1's s_i, or a budget policy): declared once for
    a population (simulator, launchers) and for one ``hgo-worker``."""

    batch_size: int = setting(32, INT, "workers' mini-batch size s", check=at_least(1))
    budget_policy: str = setting(
        "fixed",
        Choice(_policies),
        "how a worker spends its round budget: fixed "
        "(Algorithm 1), data-first, coordinates-first (the authors' code), hybrid",
    )
    rho: float = setting(
        0.5,
        FLOAT,
        "the hybrid budget policy's mix: 0 = coordinates-first .. 1 = data-first",
        check=within(0, 1),
    )

    def checked(self, *, where: str = "") -> Compute:
        forms.check(self, where=where)
        return self


@dataclass(frozen=True)
class Population(Compute):
    """Who takes part in a simulated or launched run: n devices, their hardware and the attackers."""

    n: int = setting(
        10, INT, "workers (devices) in the run, n", check=at_least(1), synonyms=("workers",), cli="workers"
    )
    mix: Any = setting(
        "default", MIX, "hardware mix: default, C_weak, C_min, C_1..C_3, C_powerful, or W,A,P fractions"
    )
    rates: tuple[float, ...] | None = setting(
        None,
        FLOATS,
        "explicit compute rate per worker (overrides the mix's draws)",
        unit="coords/ms per data point",
    )
    rate_model: str = setting(
        "hgo",
        Choice(_rate_models),
        "rate distributions of the profiles: hgo (ours) or authors (karimboubouh/HgO v1.0 src/config.py)",
    )
    attackers: int = setting(
        0, INT, "Byzantine workers present in the population", check=at_least(0), aliases=("byzantine",)
    )
    attack: str | None = setting(
        None,
        STR,
        "the attackers' attack: a built-in (hgo-plugins lists them), "
        "package.module:Name or an installed plug-in",
        default_text="none",
    )
    attack_params: dict[str, Any] = setting({}, TABLE, "attack parameters, e.g. eps=10", flag=False)
    omniscient: bool = setting(
        True,
        BOOL,
        "simulator: attackers see the round's honest gradients (the "
        "paper's evaluation); off: they estimate from their own shards as on the wire",
    )
    estimate_batches: int = setting(
        5, INT, "mini-batches a non-omniscient attacker estimates from", check=at_least(1)
    )
    byzantine_full: bool = setting(
        True, BOOL, "gradient attackers send all d coordinates (off: what their throttle allows)"
    )

    @classmethod
    def values_of(cls, obj: Any) -> dict[str, Any]:
        """The population settings of ``obj`` (a Population or a config built on one)."""
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)}

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, where: str = "") -> Population:
        return cls(**forms.coerce(cls, raw, where=where)).checked(where=where)

    def replace(self, **changes: Any) -> Population:
        return dataclasses.replace(self, **changes)

    def checked(self, *, where: str = "", late: int = 0) -> Population:
        """Every declared range and the rules between the population's settings; returns self.

        ``late``: workers that join during training (a launcher's), who need rates too.
        """
        forms.check(self, where=where)
        return self.check_rules(where=where, late=late)

    def check_rules(self, *, where: str = "", late: int = 0) -> Population:
        """The rules between the population's settings (its declared ranges aside)."""
        if self.attackers > self.n:
            raise SpecError(f"{where}--attackers must be in [0, n={self.n}], got {self.attackers}")
        if self.attackers > 0 and not self.attack:
            raise SpecError(
                f"{where}--attackers {self.attackers}: Byzantine workers need an attack name (--attack), "
                f"got {self.attack!r}"
            )
        if self.rates is not None and len(self.rates) != self.n + late:
            raise SpecError(
                f"{where}rates must give one rate per worker (n={self.n + late}), got {len(self.rates)}"
            )
        return self
