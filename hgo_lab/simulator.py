"""In-process HGO simulator on a virtual clock: the same core as the networked server.

HGO (Boubouh et al., SRDS 2022, Algorithm 1) is simulated round by round without
sockets, threads or sleeping. Each round k does what ``hgo-server`` and ``hgo-worker`` do
on the wire, with the *same* pure functions:

1. Sample q of the n workers with a seeded ``np.random.Generator`` (no replacement).
2. C_k = ``order.make_order(order.round_seed(seed, k), d, order_kind, model.groups)``,
   exactly as the server derives and the workers expand it.
3. Every sampled honest worker i draws a mini-batch of s_i points from its own shard and
   computes its gradient G_i(w_k); it delivers the first b_i positions of C_k, with
   ``b_i = throttle.expected_prefix(lambda_i, tau, s_i, d)`` — what a throttled worker
   releases by the deadline — or, with a budget policy other than ``fixed``,
   ``budget.plan(...)`` chooses (s_i, b_i).
4. Byzantine workers produce attack vectors (``hgo_common.attacks``):

   * ``omniscient = True`` (the paper's evaluation): the attack is given the true
     honest gradients of the round (the sampled honest workers' G_i on all d
     coordinates, in C_k order);
   * ``omniscient = False`` (what a Byzantine ``hgo-worker`` can do on the wire): each
     Byzantine worker estimates honest statistics from ``estimate_batches``
     mini-batch gradients on its *own* shard.

   Prefix length chosen by Byzantine workers (documented choice): with
   ``byzantine_full = True`` (default) gradient attacks send the full d coordinates —
   the strongest position, since their values then enter every segment of B_k and
   count as complete in the SGD baselines (``hgo-worker --attack-param full=1``); with
   ``False`` they send what their own throttle allows, like ``hgo-worker``'s default
   (indistinguishable by timing). Data attacks
   (label flipping) run the honest code on poisoned labels and so are throttled like
   an honest worker of their profile; ``silent`` sends nothing (prefix 0).
5. The values go into the (q x d) float32 round buffer *through the server's
   collector* (``hgo_common.collector.RoundCollector``), cast to float32 as on the
   wire, so the non-finite policy is the wire's by construction: a worker's prefix
   ends before its first non-finite value, the rest of its values are ignored.
6. ``rounds.close_round`` (with ``rounds.aggregation_rng(seed, k)`` for randomized rules
   such as bucketing) and ``rounds.apply_update``: identical to the server.

Virtual clock: a round lasts tau (``hgo``, and ``sgd`` with finite tau); for ``sgd``
with tau = inf it lasts until the slowest sampled worker has released its full gradient,
``max_i throttle.release_time_ms(d, lambda_i, s_i)`` (Byzantine workers included, at the
rate of their profile: they do not stall the server on purpose). With
``early_close = True`` the clock follows ``hgo-server``'s default early close instead: a
round whose sampled workers all deliver everything (or hit a non-finite value) ends when
the slowest of them is done, ``min(tau, max_i release_time_ms(d, lambda_i, s_i))``;
Byzantine gradient senders with full prefixes take no time. The default (False) is the
paper's round of exactly tau.

The model is evaluated on the test split after the update of round k when
``(k + 1) % eval_every == 0`` and after the last round, as ``hgo-server`` does; the
dataset split, the shards (``default_rng(seed)``), w_0 (``default_rng(seed)``) and the
sampling stream (``default_rng([seed, 1])``) are the server's too. Records are written with
``hgo_common.roundlog`` in the server's schema, plus the extra keys ``used`` (worker ids
whose rows entered the update), ``nonfinite`` (workers whose prefix the non-finite policy
cut) and ``data`` (the dataset actually used, on the first record).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from hgo_common import throttle
from hgo_common.driver import RoundDriver, RoundPlan, Timing, WorkerEntry, evaluate
from hgo_common.errors import SpecError
from hgo_common.roundlog import RoundLog
from hgo_common.spec import Population, RunSpec, build_run, driver_settings, forms
from hgo_common.spec.build import devices, n_classes_of

__all__ = [
    "FALLBACKS",
    "RoundBuffer",
    "SimConfig",
    "SimResult",
    "Simulation",
    "load_dataset",
    "run",
]

# Datasets read from files and the bundled dataset used when the files are missing.
FALLBACKS: dict[str, str] = {"mnist": "digits", "mnist-binary": "digits-binary"}


class _Model(Protocol):
    dim: int
    task: str
    groups: tuple[int, ...]

    def init(self, rng: np.random.Generator) -> np.ndarray: ...
    def gradient(
        self, w: np.ndarray, X: np.ndarray, y: np.ndarray, coords: np.ndarray | None = None
    ) -> np.ndarray: ...
    def evaluate(self, w: np.ndarray, X: np.ndarray, y: np.ndarray) -> dict[str, float]: ...


@dataclass(frozen=True)
class SimConfig(RunSpec, Population):
    """A simulated run (one seed): the run specification and its population, both declared in
    ``hgo_common.spec`` (the same settings, names and checks as ``hgo-server`` and ``hgo-run``).

    ``tau = inf`` with ``algorithm = "sgd"`` is SGD(tau = inf). ``q = None`` samples all n
    workers. ``attackers`` Byzantine workers (chosen at random among the n with the run
    seed) run ``attack``; ``f`` is what the rule is told to tolerate. Loose values are
    accepted for convenience: ``tau=60``, ``tau="auto"``, ``v=3``, ``v="auto"``, lists for
    tuples.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.checked()
        if self.tau.infinite and self.algorithm == "hgo":
            raise SpecError("hgo needs a finite deadline tau; tau = inf is the sgd baseline")

    # RunSpec and Population both define these; a simulated run is both at once.
    def checked(self, *, where: str = "", n: int | None = None, late: int = 0) -> SimConfig:
        RunSpec.checked(self, where=where, n=self.n if n is None else n)  # every declared range
        Population.check_rules(self, where=where, late=late)  # (not the ranges a second time)
        return self

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, where: str = "") -> SimConfig:
        return cls(**forms.coerce(cls, raw, where=where))

    def replace(self, **changes: Any) -> SimConfig:
        return replace(self, **changes)

    @property
    def q_eff(self) -> int:
        """q: as given, or all n workers."""
        return self.q_for(self.n)

    @property
    def quorum(self) -> int:
        """v as a number for this population."""
        return self.quorum_for(self.q_eff)

    def to_dict(self) -> dict[str, Any]:
        return forms.to_mapping(self, skip_defaults=False)


@dataclass
class SimResult:
    """What a run returns: the records it logged and the final model."""

    config: SimConfig
    records: list[dict[str, Any]]
    weights: np.ndarray
    dataset: str
    data_warning: str | None = None


# ---------------------------------------------------------------------------------------
# Data: loading with the bundled fallback, cached across runs of one process.

_DATA_CACHE: dict[tuple[Any, ...], Any] = {}


def load_dataset(
    name: str,
    data_dir: str | Path | None,
    *,
    seed: int = 0,
    max_train: int | None = None,
    test_fraction: float = 0.2,
    warn: Callable[[str], None] | None = None,
) -> tuple[Any, str | None]:
    """Load ``name``; for file datasets whose files are missing, fall back to the bundled one.

    Returns
    -------
    dataset : hgo_common.datasets.Dataset
    warning : str or None
        The fallback note (it names the missing path) when the fallback was used; it is
        also passed to ``warn`` (default: ``warnings.warn``).
    """
    from hgo_common import datasets
    from hgo_common.spec.build import require_dataset

    require_dataset(name)
    key = (name, str(data_dir) if data_dir else None, seed, max_train, test_fraction)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]  # type: ignore[no-any-return]
    note: str | None = None
    try:
        if name in FALLBACKS and (data_dir is None or not Path(data_dir).is_dir()):
            raise FileNotFoundError(f"data_dir {data_dir!s} is not a directory")
        ds = datasets.load(
            name, data_dir=data_dir, seed=seed, test_fraction=test_fraction, max_train=max_train
        )
    except (OSError, datasets.DataFileError) as exc:
        if name not in FALLBACKS:
            raise
        alt = FALLBACKS[name]
        note = (
            f"dataset {name!r} not found at {data_dir!s} ({exc}); using the bundled {alt!r} "
            f"dataset instead: results are NOT comparable to the paper's {name} numbers"
        )
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(note)
        ds = datasets.load(alt, seed=seed, test_fraction=test_fraction, max_train=max_train)
    _DATA_CACHE[key] = (ds, note)
    return ds, note


# ---------------------------------------------------------------------------------------
# The round buffer: collector semantics (float32 rows, non-finite policy).


class RoundBuffer:
    """A round's (q x d) float32 buffer, filled through the server's ``RoundCollector``.

    Each sampled worker's delivery goes through
    :meth:`hgo_common.collector.RoundCollector.add` as one chunk at offset 0, cast to
    float32 first as ``hgo-worker`` does before encoding (so a float64 value that
    overflows float32 arrives as inf). The collector applies the wire's non-finite
    policy: a worker's prefix ends right before its first non-finite value and the rest
    of its values for the round are ignored.
    """

    def __init__(self, q: int, d: int, round_index: int = 0) -> None:
        from hgo_common.collector import RoundCollector

        self.collector = RoundCollector(d, max_chunk_values=d)
        self.collector.start(round_index, q)
        self.round_index = round_index

    @property
    def values(self) -> np.ndarray:
        """(q, d) float32; row i is valid up to ``prefixes[i]``."""
        return self.collector.values

    @property
    def prefixes(self) -> np.ndarray:
        """(q,) int64 prefix lengths as the collector counted them."""
        return self.collector.prefixes

    def put(self, row: int, values: np.ndarray) -> int:
        """Deliver ``values`` (shape (k,), k <= d) as row ``row``'s prefix; return the kept length."""
        with np.errstate(over="ignore", invalid="ignore"):
            v32 = np.asarray(values, dtype=np.float32).ravel()
        if v32.size == 0:
            return 0
        res = self.collector.add(row, self.round_index, 0, v32)
        return int(res.prefix)

    def put_nan_padded(self, row: int, values: np.ndarray) -> int:
        """Deliver ``values`` as row ``row``'s prefix with its NaN kept (the HGO authors'
        NaN-padded rows, for NaN-aware rules only): the row counts at its full length.

        The collector refuses non-finite values (the wire's policy), so the NaN go in as
        zeros and are written back into the round buffer after it.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            v32 = np.asarray(values, dtype=np.float32).ravel()
        nan = np.isnan(v32)
        kept = self.put(row, np.where(nan, np.float32(0.0), v32))
        self.collector.values[row, :kept][nan[:kept]] = np.nan
        return kept

    @property
    def nonfinite(self) -> np.ndarray:
        """(q,) bool: rows whose prefix the non-finite policy cut."""
        return self.collector.truncated()

    def close(self) -> np.ndarray:
        """Close the round in the collector; return the prefixes, shape (q,)."""
        return self.collector.close()


# ---------------------------------------------------------------------------------------
# The simulation.


class Simulation:
    """A prepared run: data, shards, rates, model and the round driver for one ``SimConfig``.

    Each :meth:`step` is ``hgo_common.driver.RoundDriver``'s round with the virtual clock:
    the collection is ``hgo_common.local.local_step`` of every sampled worker (the step
    ``hgo-worker`` runs), delivered through the server's collector.
    """

    def __init__(self, cfg: SimConfig, *, warn: Callable[[str], None] | None = None) -> None:
        from hgo_common import local

        self.cfg = cfg
        spec: RunSpec = cfg
        self.ds, self.data_warning = load_dataset(
            cfg.dataset, cfg.data_dir, seed=spec.split_seed, max_train=cfg.max_train,
            test_fraction=cfg.test_fraction, warn=warn,
        )  # fmt: skip
        ds = self.ds
        self.run_ = build_run(spec, cfg.n, dataset=ds, data_warning=self.data_warning)
        n_classes = n_classes_of(ds)
        self.model: _Model = self.run_.model
        self.d = int(self.model.dim)
        # Shards, w_0 and sampling come from the rounds.* run-seed conventions that
        # hgo-server uses too (hgo_common.spec.build_run): same seed, same model and shards.
        fleet = devices(cfg, cfg.seed)  # placement, rates, worker seeds: hgo_common.spec.devices
        self.attack_rng = np.random.default_rng(fleet.attack_seed)
        self.shards = self.run_.shards
        self.byzantine = fleet.byzantine
        self.profiles = fleet.profiles
        self.rates = fleet.rates
        # Worker i's seed: its mini-batches are local.round_rng(seed_i, k, salt=i), as an
        # hgo-worker started with --seed seed_i and welcomed as worker i draws them.
        self.worker_seeds = fleet.seeds
        self.local_cfgs = [
            local.LocalConfig(rate=r, batch_size=cfg.batch_size, budget_policy=cfg.budget_policy, rho=cfg.rho)
            for r in self.rates
        ]
        self.behaviour: local.Byzantine | None = None
        if cfg.attack:
            self.behaviour = local.Byzantine(
                cfg.attack, dict(cfg.attack_params), full=cfg.byzantine_full,
                estimates=cfg.estimate_batches, n=cfg.n, f=cfg.attackers,
            )  # fmt: skip
        # Labels seen by each worker: data attacks poison the Byzantine workers' shards once.
        self.y_train = np.asarray(ds.y_train)
        self.y_poison: np.ndarray | None = None
        if self.behaviour is not None and self.behaviour.kind == "data" and cfg.attackers:
            poison_rng = np.random.default_rng(fleet.attack_seed)
            self.y_poison = self.behaviour.transform_labels(self.y_train, n_classes, poison_rng)
        settings = driver_settings(spec, self.run_, cfg.q_eff)
        round_cfg = settings.round_cfg
        self.driver = RoundDriver(settings, self.run_.w0)
        self.round_cfg = round_cfg
        self.t_ms = 0.0
        self.k = 0
        self.close_ms = float(cfg.tau_ms)  # when the current round's collection closed (virtual ms)
        self.delivered_ms = np.zeros(0)  # per row: when its last value was released

    @property
    def w(self) -> np.ndarray:
        """w_k, shape (d,), float64."""
        return self.driver.w

    # -- per-worker work ------------------------------------------------------------------

    def work(
        self, i: int, c_k: np.ndarray, honest: np.ndarray | None = None, tau_ms: float | None = None
    ) -> Any:
        """Worker i's ``local.local_step`` for round k at w_k (``honest``: omniscient attack)."""
        from hgo_common import local

        poisoned = self.byzantine[i] and self.y_poison is not None
        y = self.y_poison if poisoned and self.y_poison is not None else self.y_train
        rng = local.round_rng(self.worker_seeds[i], self.k, salt=i)
        byz = self.behaviour if self.byzantine[i] else None
        return local.local_step(
            self.model, self.driver.w, self.ds.X_train, y, c_k, self.cfg.tau_ms if tau_ms is None else tau_ms,
            self.local_cfgs[i], rng,
            byzantine=byz, honest=honest, rows=self.shards[i],
        )  # fmt: skip

    # -- one round ------------------------------------------------------------------------

    def fill_round(
        self, sampled: np.ndarray, c_k: np.ndarray, plan: RoundPlan | None = None
    ) -> tuple[RoundBuffer, list[float]]:
        """Every sampled worker's delivery for w_k, in a round buffer; and each one's finish time.

        Parameters
        ----------
        sampled : ndarray of shape (q,)
            Worker ids, row i of the buffer belongs to ``sampled[i]``.
        c_k : ndarray of shape (d,)
        plan : RoundPlan, optional
            The round's plan; with ``--tau auto`` its τ_k, and the round closes as soon as
            the block target is met (the prefixes are those released by then).

        Returns
        -------
        buffer : RoundBuffer
        done_ms : list of float
            Virtual time at which each row has released everything it planned.
        """
        tau = self.cfg.tau_ms if plan is None else plan.tau_ms
        works: list[Any] = [None] * sampled.size
        honest_rows = [r for r, i in enumerate(sampled) if not self.byzantine[i]]
        byz_rows = [r for r, i in enumerate(sampled) if self.byzantine[i]]
        needs_honest = (
            bool(byz_rows) and self.cfg.omniscient and self.behaviour is not None
            and self.behaviour.kind == "gradient"
        )  # fmt: skip
        # Attacks with honest_view "prefix" (the HGO authors' statistics) see NaN past each
        # honest worker's own prefix, as the authors' server holds them (attacks.Attack).
        pad = needs_honest and self.behaviour is not None and self._honest_view() == "prefix"
        full: list[np.ndarray] = []
        for r in honest_rows:
            works[r] = self.work(int(sampled[r]), c_k, tau_ms=tau)
            if needs_honest:
                row = np.asarray(works[r].source.full(), dtype=np.float64)
                if pad:
                    row = np.where(np.arange(row.size) < int(works[r].limit), row, np.nan)
                full.append(row)
        honest = np.stack(full) if full else None
        for r in byz_rows:
            works[r] = self.work(int(sampled[r]), c_k, honest=honest, tau_ms=tau)
        self.close_ms = self._target_close_ms(works, tau)
        buf = RoundBuffer(sampled.size, self.d, self.k)
        self.delivered_ms = np.zeros(sampled.size)
        longest = self._nan_padded_length(works, honest_rows) if pad else None
        for r, work in enumerate(works):
            p = self._released_by(work, self.close_ms)
            if longest is not None and self.byzantine[int(sampled[r])]:
                buf.put_nan_padded(r, work.source.ensure_all(min(p, longest)))
            else:
                buf.put(r, work.source.ensure_all(p))
            self.delivered_ms[r] = self._release_ms(work, p) if p else self.close_ms
        return buf, [self._full_time(int(i), w) for i, w in zip(sampled, works, strict=True)]

    def _nan_padded_length(self, works: list[Any], honest_rows: list[int]) -> int | None:
        """With a NaN-aware rule (``hgo_common.aggregators.nan_authors``) and an attack on
        NaN-padded honest rows, the length the HGO authors' server gives a Byzantine row:
        the longest honest prefix (``fill_array``'s width), NaN kept where the attack is
        NaN; None otherwise (the wire's non-finite policy applies)."""
        from hgo_common.aggregators import nan_authors

        if not nan_authors.skips_nan(self.cfg.rule) or not honest_rows:
            return None
        return max(int(works[r].limit) for r in honest_rows)

    def _honest_view(self) -> str:
        from hgo_common import attacks

        return str(attacks.get(self.behaviour.attack).honest_view) if self.behaviour is not None else "full"

    def _released_by(self, work: Any, t_ms: float) -> int:
        """What ``work`` has released ``t_ms`` into the round (all it plans, at or after τ)."""
        if work.rate <= 0 or (t_ms >= self.cfg.tau_ms and self.driver.deadline is None):
            return int(work.limit)
        return min(int(work.limit), throttle.released(t_ms, work.rate, work.batch_size, self.d))

    def _release_ms(self, work: Any, n: int) -> float:
        return 0.0 if work.rate <= 0 else throttle.release_time_ms(n, work.rate, work.batch_size)

    def _target_close_ms(self, works: Sequence[Any], tau: float) -> float:
        """--tau auto: the instant the v-th fastest row reaches the block target (τ_k at the latest)."""
        policy = self.driver.deadline
        if policy is None or not works:
            return tau
        need = policy.target_coords
        times = sorted(self._release_ms(w, need) if w.limit >= need else math.inf for w in works)
        v = min(policy.v, len(times))
        return min(tau, times[v - 1])

    def _full_time(self, i: int, work: Any) -> float:
        """When worker i has delivered everything it can: an honest worker's full gradient
        (d coordinates at its rate), a Byzantine sender's planned prefix."""
        if self.byzantine[i] and self.behaviour is not None and self.behaviour.kind == "gradient":
            return self._release_ms(work, int(work.limit))
        return self._release_ms(work, self.d)

    def round_time_ms(self, done_ms: Sequence[float], prefixes: np.ndarray, nonfinite: np.ndarray) -> float:
        """Virtual duration of the round (see the module docstring)."""
        tau = float(self.close_ms)
        if math.isfinite(tau) and not self.cfg.early_close:
            return tau
        if math.isfinite(tau) and not bool(np.all((prefixes >= self.d) | nonfinite)):
            return tau  # someone is still sending at the deadline
        return min(tau, max(done_ms, default=0.0))

    def step(self) -> dict[str, Any]:
        """Run round k through the driver; return its log record (without evaluation)."""
        drv, k = self.driver, self.k
        plan = drv.begin(k, self.cfg.n)
        c_k = drv.order(plan)
        buf, done_ms = self.fill_round(plan.sampled, c_k, plan)
        prefixes = buf.close()
        outcome = drv.close(plan, buf.values, prefixes, c_k, self.delivered_ms)
        dt = self.round_time_ms(done_ms, prefixes, buf.nonfinite)
        self.t_ms += dt
        self.k += 1
        workers = [WorkerEntry(int(i), self.profiles[i], bool(self.byzantine[i])) for i in plan.sampled]
        timing = Timing(
            t_s=self.t_ms / 1000.0, round_ms=dt, close_ms=dt,
            early_close=math.isfinite(plan.tau_ms) and dt < plan.tau_ms,
        )  # fmt: skip
        return drv.record(plan, outcome, prefixes, workers, timing, nonfinite=buf.nonfinite)

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.model, self.driver.w, self.ds.X_test, self.ds.y_test)


def worker_rates(cfg: SimConfig) -> list[float]:
    """λ_i of the n workers of a run (``hgo_common.spec.devices``: the rates the simulator and
    the launchers both use)."""
    return devices(cfg, cfg.seed).rates


def run(
    cfg: SimConfig,
    log_path: str | Path | None = None,
    *,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> SimResult:
    """Simulate ``cfg.rounds`` rounds; write the round log to ``log_path`` (JSON lines) if given."""
    sim = Simulation(cfg, warn=warn)
    records: list[dict[str, Any]] = []
    with _one_blas_thread(), RoundLog(log_path) as log:
        for k in range(cfg.rounds):
            rec = sim.step()
            if sim.driver.evaluates(k):
                rec.update(sim.evaluate())
            if k == 0:
                rec["data"] = sim.ds.name
                rec["secret_seed"] = int(sim.driver.settings.seed)  # = --seed: nothing travels
                if sim.data_warning:
                    rec["data_warning"] = sim.data_warning
            log.write(rec)
            records.append(rec)
            if progress is not None:
                progress(rec)
    return SimResult(cfg, records, sim.w, sim.ds.name, sim.data_warning)


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """Limit BLAS to one thread while simulating.

    The simulator multiplies many small matrices (one mini-batch per worker); on a busy
    2-core machine two OpenBLAS threads per product made an MLP round 17x slower
    (measured: 50 rounds of fig3 in 77 s vs 4.5 s). threadpoolctl ships with
    scikit-learn; without it this is a no-op.
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")  # type: ignore[no-any-return]


def with_overrides(cfg: SimConfig, **changes: Any) -> SimConfig:
    """``dataclasses.replace`` with tuple conversion for list-valued TOML fields."""
    for key in ("hidden", "rates", "mix"):
        if isinstance(changes.get(key), list):
            changes[key] = tuple(changes[key])
    return replace(cfg, **changes)


def config_fields() -> Sequence[str]:
    """Names of the ``SimConfig`` settings (the keys a scenario file may set)."""
    from hgo_common.spec.declare import declared

    return [s.name for s in (s for s, _ in declared(SimConfig))]
