"""Issue 20, break 6: the run's randomness is not on the wire.

On 968fbdd the TrainingSpec carried the run seed, from which a worker could compute who is
sampled in every round, every C_k and the bucketing permutations. Now the round driver's
streams come from a secret seed drawn by the server (or given with ``--secret-seed``): a
worker sees the public seed (its shard, w_0) and, in round k's task, only C_k's seed.
"""

from __future__ import annotations

from hgo_common import order, rounds
from tests.wireclient import serving, wait_for


async def test_workers_cannot_predict_orders_or_samples_from_what_they_receive() -> None:
    async with serving(q=2, min_workers=2, num_shards=2, tau="300ms", seed=5) as srv:
        a, b = srv.client(), srv.client()
        wa = await a.join(name="a")
        await b.join(name="b")
        secret = srv.core.secret_seed
        public = wa.spec.seed
        assert public == 5 and secret != public  # 2**-32 chance of a clash
        tasks = [await a.next_task(), await a.next_task()]
        for task in tasks:
            # C_k is the secret stream's, not the one the public seed would give
            assert task.order_seed == order.round_seed(secret, task.round)
            assert task.order_seed != order.round_seed(public, task.round)
        # nothing in the Welcome or a task holds the secret
        for msg in (wa, *tasks):
            assert str(secret) not in str(msg)
        assert srv.core.driver.settings.seed == secret
        assert rounds.sampling_rng(public).random() != rounds.sampling_rng(secret).random()


async def test_the_secret_seed_is_in_the_round_log_and_can_be_given(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hgo_common import roundlog

    log = tmp_path / "rounds.jsonl"
    async with serving(q=1, min_workers=1, num_shards=1, tau="200ms", seed=5, secret_seed=77,
                       log=str(log), rounds=2) as srv:  # fmt: skip
        c = srv.client()
        await c.join(name="c")
        task = await c.next_task()
        assert task.order_seed == order.round_seed(77, task.round)
        await wait_for(lambda: log.exists() and len(roundlog.read(log)) >= 1, what="the first record")
    assert roundlog.read(log)[0]["secret_seed"] == 77
