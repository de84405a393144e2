"""Crash / silence: the Byzantine worker joins, is sampled, and sends nothing.

Nothing to compute: a worker (or the simulator) whose attack has kind ``"silent"`` simply
sends no chunk for its rounds (a prefix of length 0). HGO treats it like a worker too slow
to reach the quorum: the block B_k is set by the v-th largest prefix (paper §4, Remark 2).
Calling it as a gradient attack raises :class:`~hgo_common.attacks.AttackKindError`.
"""

from __future__ import annotations

from .base import Attack, register

register(Attack(name="silent", kind="silent", summary="send nothing (crash / silence)"))
