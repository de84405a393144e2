"""Issue 20, break 2: configurations that let f Byzantine identities stall or break a run.

On 968fbdd ``hgo-server --q 5 --f 2 --rule median --v auto`` (v = 5 > q - f = 3) and
``--rule average --f 2`` were accepted; two identities sending one value just before τ
then kept every ``--tau auto`` round at τ-max. Now the configuration is refused at start
(exit 2, naming q, f and v) unless ``--allow-unsafe`` says it is on purpose, and the
adaptive deadline takes its rate from a rank that ignores the f slowest (and fastest)
workers.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from hgo_common.deadline import AutoTau, DeadlinePolicy
from hgo_common.errors import SpecError
from hgo_common.spec import RunSpec
from tests.procs import console


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["--q", "5", "--f", "2", "--rule", "median", "--v", "auto"],
         ["--q 5, --f 2", "q - f = 3", "quorum v (5)", "--allow-unsafe"]),
        (["--q", "5", "--f", "2", "--rule", "median", "--v", "5"], ["q - f = 3", "quorum v (5)"]),
        (["--q", "6", "--f", "2", "--rule", "median", "--v", "5"], ["--q 6, --f 2", "q - f = 4", "(5)"]),
        (["--rule", "average", "--f", "2"],
         ["--rule average", "no robustness guarantee", "--f 2", "--allow-unsafe"]),
        (["--algorithm", "sgd", "--q", "6", "--f", "2", "--rule", "median", "--v", "5", "--tau", "inf"],
         ["q - f = 4", "complete gradients the rule needs (5)"]),
    ],
)  # fmt: skip
def test_the_server_refuses_a_configuration_f_identities_can_stall(
    argv: list[str], needles: list[str]
) -> None:
    res = subprocess.run([*console("hgo-server"), *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


def test_allow_unsafe_is_an_explicit_choice() -> None:
    spec = RunSpec.from_mapping({"rule": "average", "f": 2, "allow_unsafe": True})
    assert spec.allow_unsafe and spec.f == 2
    with pytest.raises(SpecError, match="no robustness guarantee"):
        RunSpec.from_mapping({"rule": "average", "f": 2})
    # a robust rule with room for the quorum is accepted as it is
    assert RunSpec.from_mapping({"rule": "median", "f": 2, "q": 10}).quorum_for(10) == 5


def test_auto_tau_ignores_the_f_slowest_workers() -> None:
    """Two identities deliver one value late every round: the deadline does not follow them."""
    spec = AutoTau(target=0.5, tau_min=5.0, tau_max=1000.0, memory=1.0, headroom=0.0)
    d, q, v, f = 1000, 5, 3, 2
    honest = np.array([10.0, 8.0, 6.0])  # positions per ms
    byz = np.array([1e-4, 1e-4])  # one value just before tau
    rates = np.concatenate([honest, byz])
    for robust_f, expect_max in ((0, True), (f, False)):
        pol = DeadlinePolicy(spec, d, v, robust_f)
        pol.observe(list(range(q)), rates * 100.0, np.full(q, 100.0))
        choice = pol.choose(list(range(q)))
        # rank v = 3 is the slowest honest worker: 500 coords at 6/ms = 83 ms
        assert (choice.tau_ms == 1000.0) is expect_max or robust_f == 0, choice
        if robust_f:
            assert choice.tau_ms == pytest.approx(500 / 6.0)
    # with f = 0 nothing changes: the v-th largest rate, as before
    pol = DeadlinePolicy(spec, d, v, 0)
    pol.observe(list(range(q)), rates * 100.0, np.full(q, 100.0))
    assert pol.choose(list(range(q))).tau_ms == pytest.approx(500 / 6.0)
    # the attack that worked: v larger than the honest count among the sampled
    pol = DeadlinePolicy(spec, d, 4, 0)
    pol.observe(list(range(q)), rates * 100.0, np.full(q, 100.0))
    assert pol.choose(list(range(q))).tau_ms == 1000.0  # rank 4 is a Byzantine rate
    pol = DeadlinePolicy(spec, d, 4, 1)
    pol.observe(list(range(q)), rates * 100.0, np.full(q, 100.0))
    assert pol.choose(list(range(q))).tau_ms == 1000.0  # q - f = 4: still within reach of one attacker
