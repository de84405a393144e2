"""Throttle model and budget policies: closed forms, edge cases, invariants (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hgo_common import budget, throttle
from hgo_common.budget import Plan

D = 23_860


# ---- throttle -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("elapsed", "rate", "s", "d", "expected"),
    [
        (60.0, 500.0, 32, D, 937),  # 937.5 floored
        (60.0, 10_000.0, 32, D, 18_750),
        (60.0, 50_000.0, 32, D, D),  # 93,750 capped at d
        (0.0, 500.0, 32, D, 0),
        (0.064, 500.0, 32, D, 1),  # exactly one coordinate's cost
        (0.0639, 500.0, 32, D, 0),
        (1.0, 1.0, 1, 5, 1),
        (1e9, 1.0, 1, 5, 5),
        (math.inf, 1.0, 1, 5, 5),
        (0.0, 0.0, 32, D, D),  # rate 0: unthrottled
        (0.0, -1.0, 32, D, D),
        (0.0, math.inf, 32, D, D),
        (10.0, 1e300, 1, D, D),  # rate * elapsed overflows to inf: still d
        (10.0, 500.0, 1, 0, 0),
    ],
)
def test_released_closed_form(elapsed: float, rate: float, s: int, d: int, expected: int) -> None:
    assert throttle.released(elapsed, rate, s, d) == expected


def test_expected_prefix_is_released_at_tau() -> None:
    assert throttle.expected_prefix(500.0, 60.0, 32, D) == 937
    assert throttle.expected_prefix(500.0, math.inf, 32, D) == D
    assert throttle.expected_prefix(0.0, 60.0, 32, D) == D


def test_release_time_closed_form() -> None:
    assert throttle.release_time_ms(937, 500.0, 32) == pytest.approx(59.968)
    assert throttle.release_time_ms(0, 500.0, 32) == 0.0
    assert throttle.release_time_ms(100, 0.0, 32) == 0.0
    assert throttle.release_time_ms(100, math.inf, 32) == 0.0
    assert throttle.release_time_ms(3, 3.0, 1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "msg"),
    [
        (lambda: throttle.released(-1.0, 500.0, 32, D), "elapsed_ms.*-1.0"),
        (lambda: throttle.released(math.nan, 500.0, 32, D), "elapsed_ms.*nan"),
        (lambda: throttle.released(1.0, 500.0, 0, D), "batch_size.*0"),
        (lambda: throttle.released(1.0, 500.0, 2.5, D), "batch_size.*2.5"),
        (lambda: throttle.released(1.0, 500.0, 32, -3), "d must.*-3"),
        (lambda: throttle.released(1.0, math.nan, 32, D), "rate.*nan"),
        (lambda: throttle.release_time_ms(-2, 500.0, 32), "n_coords.*-2"),
        (lambda: throttle.release_time_ms(2, 500.0, -32), "batch_size.*-32"),
    ],
)
def test_throttle_rejects_bad_inputs(call: object, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        call()  # type: ignore[operator]


rates = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False)
batches = st.integers(min_value=1, max_value=4096)
dims = st.integers(min_value=0, max_value=10**7)


@settings(max_examples=300, deadline=None)
@given(rate=rates, s=batches, d=dims, n=st.integers(min_value=0, max_value=10**7))
def test_release_time_inverts_released(rate: float, s: int, d: int, n: int) -> None:
    t = throttle.release_time_ms(n, rate, s)
    # At t exactly n (capped at d) coordinates may be out, and just before t fewer.
    assert throttle.released(t, rate, s, d) >= min(n, d)
    if n > 0 and n <= d and t > 0:
        before = math.nextafter(t, 0.0) * (1 - 1e-9)
        assert throttle.released(before, rate, s, d) < n


@settings(max_examples=300, deadline=None)
@given(rate=rates, s=batches, d=dims, t1=st.floats(0, 1e6), t2=st.floats(0, 1e6))
def test_released_monotone_and_bounded(rate: float, s: int, d: int, t1: float, t2: float) -> None:
    a, b = sorted((t1, t2))
    ra, rb = throttle.released(a, rate, s, d), throttle.released(b, rate, s, d)
    assert 0 <= ra <= rb <= d
    assert rb == min(d, math.floor(rate * b / s))


# ---- budget --------------------------------------------------------------------------------


def test_policies_contract() -> None:
    assert budget.POLICIES == ("fixed", "data-first", "coordinates-first", "hybrid")
    p = budget.plan("fixed", rate=500.0, tau_ms=60.0, d=D, batch_size=32)
    assert p == Plan(32, 937)
    with pytest.raises(AttributeError):
        p.coords = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("policy", "rate", "expected"),
    [
        # B = rate * 60: 30,000 / 600,000 / 3,000,000; floor(B / d) = 1 / 25 / 125.
        ("fixed", 500.0, Plan(32, 937)),
        ("fixed", 10_000.0, Plan(32, 18_750)),
        ("fixed", 50_000.0, Plan(32, D)),
        ("data-first", 500.0, Plan(32, 937)),
        ("data-first", 10_000.0, Plan(32, 18_750)),
        ("data-first", 50_000.0, Plan(125, D)),
        ("coordinates-first", 500.0, Plan(1, D)),  # 30,000 >= d: one data point covers all
        ("coordinates-first", 10_000.0, Plan(25, D)),
        ("coordinates-first", 50_000.0, Plan(125, D)),
        # hybrid rho = .5: floor(sqrt(1 * 32)) = 5 -> 6,000; floor(sqrt(25 * 32)) = 28 -> 21,428.
        ("hybrid", 500.0, Plan(5, 6_000)),
        ("hybrid", 10_000.0, Plan(28, 21_428)),
        ("hybrid", 50_000.0, Plan(125, D)),
    ],
)
def test_plan_closed_forms(policy: str, rate: float, expected: Plan) -> None:
    assert budget.plan(policy, rate=rate, tau_ms=60.0, d=D, batch_size=32) == expected


def test_coordinates_first_small_budget() -> None:
    # B = 10 * 60 = 600 < d: batch of one, 600 coordinates.
    assert budget.plan("coordinates-first", rate=10.0, tau_ms=60.0, d=D, batch_size=32) == Plan(1, 600)
    assert budget.plan("data-first", rate=10.0, tau_ms=60.0, d=D, batch_size=32) == Plan(32, 18)


def test_hybrid_endpoints() -> None:
    for rate in (10.0, 500.0, 10_000.0, 50_000.0):
        kw = {"rate": rate, "tau_ms": 60.0, "d": D, "batch_size": 32}
        assert budget.plan("hybrid", rho=0.0, **kw) == budget.plan("coordinates-first", **kw)
        assert budget.plan("hybrid", rho=1.0, **kw) == budget.plan("data-first", **kw)


def test_max_batch_caps_adaptive_policies() -> None:
    p = budget.plan("data-first", rate=50_000.0, tau_ms=60.0, d=D, batch_size=32, max_batch=100)
    assert p == Plan(100, D)
    p = budget.plan("data-first", rate=500.0, tau_ms=60.0, d=D, batch_size=32, max_batch=8)
    assert p == Plan(8, 3_750)
    # fixed keeps the requested batch size.
    assert budget.plan("fixed", rate=500.0, tau_ms=60.0, d=D, batch_size=32, max_batch=8) == Plan(32, 937)


def test_unbounded_budget_gives_full_gradient() -> None:
    for policy in budget.POLICIES:
        assert budget.plan(policy, rate=500.0, tau_ms=math.inf, d=D, batch_size=32) == Plan(32, D)
        assert budget.plan(policy, rate=0.0, tau_ms=60.0, d=D, batch_size=7) == Plan(7, D)
        assert budget.plan(policy, rate=math.inf, tau_ms=60.0, d=D, batch_size=7) == Plan(7, D)


def test_tiny_budget() -> None:
    assert budget.plan("fixed", rate=0.1, tau_ms=60.0, d=D, batch_size=32) == Plan(32, 0)
    assert budget.plan("coordinates-first", rate=0.1, tau_ms=60.0, d=D, batch_size=32) == Plan(1, 6)
    assert budget.plan("hybrid", rate=0.1, tau_ms=0.0, d=D, batch_size=32) == Plan(5, 0)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"policy": "greedy"}, "'greedy'"),
        ({"d": 0}, "d must.*0"),
        ({"batch_size": 0}, "batch_size.*0"),
        ({"max_batch": 0}, "max_batch.*0"),
        ({"rho": 1.5}, "rho.*1.5"),
        ({"tau_ms": -5.0}, "tau_ms.*-5.0"),
        ({"rate": math.nan}, "rate.*nan"),
    ],
)
def test_plan_rejects_bad_inputs(kwargs: dict[str, object], msg: str) -> None:
    args: dict[str, object] = {"policy": "hybrid", "rate": 500.0, "tau_ms": 60.0, "d": D, "batch_size": 32}
    args.update(kwargs)
    policy = args.pop("policy")
    with pytest.raises(ValueError, match=msg):
        budget.plan(policy, **args)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(
    policy=st.sampled_from(budget.POLICIES),
    rate=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False),
    tau=st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    d=st.integers(min_value=1, max_value=10**7),
    s0=st.integers(min_value=1, max_value=2048),
    rho=st.floats(min_value=0.0, max_value=1.0),
    max_batch=st.one_of(st.none(), st.integers(min_value=1, max_value=10**5)),
)
def test_plan_invariants(
    policy: str, rate: float, tau: float, d: int, s0: int, rho: float, max_batch: int | None
) -> None:
    p = budget.plan(policy, rate=rate, tau_ms=tau, d=d, batch_size=s0, rho=rho, max_batch=max_batch)
    assert isinstance(p.batch_size, int) and isinstance(p.coords, int)
    assert p.batch_size >= 1
    assert 0 <= p.coords <= d
    assert p.batch_size * p.coords <= rate * tau
    if policy != "fixed" and max_batch is not None:
        assert p.batch_size <= max_batch
    if policy == "fixed":
        assert p == Plan(s0, throttle.expected_prefix(rate, tau, s0, d))
    # No policy wastes a whole coordinate's worth of budget when it could still add one.
    if p.coords < d:
        assert p.batch_size * (p.coords + 1) > rate * tau * (1 - 1e-12)
