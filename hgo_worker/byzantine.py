"""Byzantine behaviour of a worker on the wire (docs/attacks-and-profiles.md; attacks in hgo_common.attacks).

A Byzantine worker is an ordinary authenticated session that sends what an attack
decides. On the wire it has no view of the honest workers' gradients, so colluding
attackers *estimate* the honest statistics from their own shard: each round the worker
draws ``estimates`` independent mini-batches (default 5) and computes their gradients at
the coordinates it is about to send; that (m × k) matrix is the attack's ``honest``
input (ALIE, Baruch et al. 2019; Fall of Empires, Xie et al. 2019, as in the paper's
evaluation, but not omniscient).

Kinds (``hgo_common.attacks``):

``gradient`` (alie, foe, gaussian, large-value, sign-flip, nan)
    The attack vector replaces the worker's gradient. ``nan`` sends non-finite values,
    which the server's non-finite policy cuts off.
``data`` (label-flip)
    The worker's shard labels are transformed once; it then behaves honestly.
``silent``
    The worker keeps its session (heartbeats) but sends no gradient at all.

Federated evaluation (``hgo_worker.evaluate``): every Byzantine worker except a silent one
also lies in its evaluation reports (accuracy 1, loss 0, 2**32-1 examples).

Prefix length. By default a Byzantine worker sends **as much as its own throttle allows**
(its profile or ``--rate``), released on the same schedule as an honest worker, so it is
indistinguishable by timing. With ``--attack-param full=1`` it sends all d values at the
start of the round (an attacker with unlimited hardware, the strongest position for
lengthening the block). Worker-level attack params, consumed here and not passed to the
attack: ``full`` (0/1), ``estimates`` (m >= 2), ``n`` and ``f`` (the system size the
attack assumes, e.g. for ALIE's z; defaults n=10, f=1; ``hgo-run`` passes the real ones).

The values themselves are computed by ``hgo_common.local.local_step`` (the step the
simulator's Byzantine workers run too); this module parses the command-line choice.
"""

from __future__ import annotations

from typing import Any

from hgo_common.local import Byzantine

WORKER_PARAMS = ("full", "estimates", "n", "f")


def parse_behaviour(attack: str, params: dict[str, Any]) -> Byzantine:
    """``--byzantine ATTACK --attack-param k=v ...``: split the worker-level params from the attack's.

    Raises ValueError naming an unknown attack, an unknown or bad parameter, or
    ``estimates < 2`` (the attacker needs a spread to estimate).
    """
    rest = dict(params)
    kw: dict[str, Any] = {}
    if "full" in rest:
        kw["full"] = bool(int(float(rest.pop("full"))))
    for key in ("estimates", "n", "f"):
        if key in rest:
            kw[key] = int(rest.pop(key))
    if kw.get("estimates", 5) < 2:
        raise ValueError(f"attack param estimates must be >= 2, got {kw['estimates']}")
    return Byzantine(attack=attack, params=rest, **kw)
