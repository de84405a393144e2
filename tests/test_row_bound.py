"""The row bound scaled to the round's rows (``median-norm:C``, the default) and recovery
from poisoning under ``average`` (issue 20, item 4).

The recovery test trains a softmax regression on the bundled digits data with
``rounds.close_round`` exactly as the server and the simulator close a round: 10 honest
workers, 3 attackers sending 3e38 in every coordinate for 5 rounds, then gone. Measured
(this seed): accuracy 6.7 points below the honest run right after the attack, back within
2 points of it 2 rounds after the attackers left; the test allows 10. Under the former
default ``coord:1e6`` the same run stays at 0.565 for good.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hgo_common import datasets, models, rounds

# ------------------------------------------------------------------ the bound itself


def test_default_is_scaled_to_the_round_and_absolute_bounds_stay() -> None:
    assert rounds.DEFAULT_ROW_BOUND == "median-norm:10"
    b = rounds.RowBound.parse(rounds.DEFAULT_ROW_BOUND)
    assert (b.kind, b.bound, str(b)) == ("median-norm", 10.0, "median-norm:10")
    assert rounds.RoundConfig(d=3, v=1).row_bound == b
    for text in ("coord:1e+06", "norm:100", "off"):
        assert str(rounds.RowBound.parse(text)) == text
    for bad in ("median-norm:0", "median-norm:-2", "median-norm:inf"):
        with pytest.raises(ValueError, match="row bound must be a finite number"):
            rounds.RowBound.parse(bad)
    with pytest.raises(ValueError, match=r"expected coord:B, norm:B or off, or median-norm:C .*'median:10'"):
        rounds.RowBound.parse("median:10")
    with pytest.raises(ValueError, match=r"B or C a number, got 'median-norm:ten'"):
        rounds.RowBound.parse("median-norm:ten")


def test_honest_rows_pass_untouched_and_a_huge_row_is_scaled_to_c_times_the_median() -> None:
    rng = np.random.default_rng(0)
    q, d = 9, 400
    values = rng.standard_normal((q, d)).astype(np.float32)
    p = np.full(q, d)
    b = rounds.RowBound.parse("median-norm:10")
    same, changed = rounds.bound_rows(values, p, b)
    assert same is values and changed == 0
    values[4] = 3e38
    out, changed = rounds.bound_rows(values, p, b)
    assert changed == 1 and out is not values
    norms = np.linalg.norm(values.astype(np.float64), axis=1)
    med = np.median(np.delete(norms, 4))  # the 3e38 row sits above the median: it cannot move it
    np.testing.assert_allclose(np.linalg.norm(out[4].astype(np.float64)), 10 * np.median(norms), rtol=1e-5)
    assert np.median(norms) == pytest.approx(np.median(np.append(np.delete(norms, 4), np.inf)))
    assert 10 * np.median(norms) < 11 * med
    np.testing.assert_array_equal(np.delete(out, 4, axis=0), np.delete(values, 4, axis=0))
    np.testing.assert_array_equal(values[4], np.float32(3e38))  # the caller's buffer is not changed


def test_f_byzantine_rows_below_half_cannot_raise_the_bound() -> None:
    rng = np.random.default_rng(1)
    q, f, d = 11, 5, 300
    values = rng.standard_normal((q, d)).astype(np.float32)
    values[:f] = 1e19  # float32 squares overflow: the norms are redone in float64
    p = np.full(q, d)
    out, changed = rounds.bound_rows(values, p, rounds.RowBound.parse("median-norm:10"))
    assert changed == f
    honest = np.linalg.norm(values[f:].astype(np.float64), axis=1)
    got = np.linalg.norm(out[:f].astype(np.float64), axis=1)
    # the median of the 11 rows is an honest row's norm: the limit is 10 honest norms
    assert np.all(got <= 10 * honest.max() * (1 + 1e-6)) and np.all(got >= 10 * honest.min() * (1 - 1e-6))


def test_the_limit_follows_each_prefix_length() -> None:
    # Rows with short prefixes are held to C * median-per-coordinate * sqrt(p_i): a short
    # honest row is not clipped for being short, a short attacker is held to its length.
    q, d = 7, 10_000
    values = np.ones((q, d), dtype=np.float32)
    p = np.array([d, d, d, 100, 400, 2500, 100])
    values[6, :100] = 1000.0  # per-coordinate 1000x the others
    out, changed = rounds.bound_rows(values, p, rounds.RowBound.parse("median-norm:10"))
    assert changed == 1
    np.testing.assert_allclose(
        np.linalg.norm(out[6, :100].astype(np.float64)), 10 * 1.0 * math.sqrt(100), rtol=1e-6
    )
    np.testing.assert_array_equal(out[:6], values[:6])
    # rows that sent nothing do not count toward the median
    p0 = np.array([d, d, 0, 0, 0, 0, 100])
    _, changed = rounds.bound_rows(values, p0, rounds.RowBound.parse("median-norm:10"))
    assert changed == 1


# ------------------------------------------------------------------ recovery under average

ATTACK_FROM, ATTACK_ROUNDS, ROUNDS, RECOVER_WITHIN, ATTACKERS = 30, 5, 110, 10, 3


def train(row_bound: str | None, attack: bool) -> tuple[list[float], list[int]]:
    """Test accuracy after every round, and rows bounded per round, of one seeded run."""
    ds = datasets.load("digits-binary", seed=0)
    model = models.create("logistic", n_features=ds.n_features, n_classes=ds.n_classes)
    rng = np.random.default_rng(7)
    honest, batch = 10, 32
    shards = np.array_split(rng.permutation(len(ds.y_train)), honest)
    w = rounds.initial_weights(model, 0)
    d = w.size
    kwargs = {} if row_bound is None else {"row_bound": rounds.RowBound.parse(row_bound)}
    cfg = rounds.RoundConfig(d=d, v=honest, rule="average", lr=0.5, **kwargs)
    order = np.arange(d)
    acc, bounded = [], []
    for k in range(ROUNDS):
        rows = np.zeros((honest + ATTACKERS, d), dtype=np.float32)
        for i, shard in enumerate(shards):
            pick = rng.choice(shard, size=batch, replace=False)
            rows[i] = model.gradient(w, ds.X_train[pick], ds.y_train[pick])
        present = attack and ATTACK_FROM <= k < ATTACK_FROM + ATTACK_ROUNDS
        rows[honest:] = 3e38
        prefixes = np.array([d] * honest + [d if present else 0] * ATTACKERS)
        out = rounds.close_round(rows, prefixes, order, cfg)
        w = rounds.apply_update(w, out)
        bounded.append(out.bounded)
        acc.append(model.evaluate(w, ds.X_test, ds.y_test)["accuracy"])
    return acc, bounded


def test_average_recovers_from_a_short_3e38_attack_under_the_default_bound() -> None:
    clean, clean_bounded = train(None, attack=False)
    poisoned, bounded = train(None, attack=True)
    assert sum(clean_bounded) == 0  # the default bound never touched an honest row here
    assert bounded[ATTACK_FROM : ATTACK_FROM + ATTACK_ROUNDS] == [ATTACKERS] * ATTACK_ROUNDS
    end = ATTACK_FROM + ATTACK_ROUNDS
    # the attack did hurt (measured: 6.7 points below the honest run one round after it)
    window = slice(ATTACK_FROM, end + 3)
    assert max(c - p for c, p in zip(clean[window], poisoned[window], strict=True)) > 0.04
    # within RECOVER_WITHIN rounds of the attacker leaving, and from then on, the model is
    # back at the honest run's accuracy (within 2 points)
    back = end + RECOVER_WITHIN
    assert all(p >= c - 0.02 for p, c in zip(poisoned[back:], clean[back:], strict=True))
    # the former default coord:1e6 never recovers on the same run (the test can fail)
    wrecked, _ = train("coord:1e6", attack=True)
    assert max(wrecked[back:]) < clean[-1] - 0.2
