"""Persistence of the parameter server: checkpoints, ``--resume`` and ``--export``.

A checkpoint (``hgo_server.checkpoint``) holds w_k, the sampling stream's state and the
counters, so a resumed run samples exactly as the uninterrupted one would have; the
export (``hgo_common.models.save``) is the model file users load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hgo_common.driver import RoundDriver
from hgo_common.errors import HGOError
from hgo_common.spec import driver_settings

from .config import ConfigError
from .state import ServerState

log = logging.getLogger("hgo.server")


class ExportError(HGOError, OSError):
    """``--export`` could not be written at the end of a run; the message names the path."""


class Persistence(ServerState):
    """Checkpoints and the exported model (a part of :class:`hgo_server.server.Server`)."""

    async def export_model(self, k: int, *, completed: bool) -> Path | None:
        """Write w after ``k`` rounds to ``--export`` (hgo_common.models.save); None without it."""
        target = self.cfg.export
        if target is None:
            return None
        from hgo_common.models import save

        ds = self.setup.dataset
        meta = {
            "dataset": self.cfg.dataset, "round": k, "completed": completed,
            "evaluation": dict(self.last_eval), "settings": self.cfg.as_dict(),
        }  # fmt: skip
        w = self.weights  # a copy, taken between rounds
        try:
            path: Path = await self._in_thread(
                lambda: save(
                    target, self.setup.model, w, meta=meta,
                    feature_mean=ds.feature_mean, feature_std=ds.feature_std,
                )
            )  # fmt: skip
        except (OSError, ValueError) as exc:
            # The path passed the start-up check (check_export_path) and failed now (disk full,
            # a directory removed meanwhile): say so instead of a traceback; the caller decides.
            raise ExportError(
                f"--export {str(target)!r}: cannot write the model ({getattr(exc, 'strerror', None) or exc})"
            ) from None
        log.info("model after %d rounds written to %s", k, path)
        return path

    def check_export_path(self) -> None:
        """At start: ConfigError unless ``--export`` can be created (the check is a real open,
        so ``/proc/...`` and read-only mounts fail here, not after training)."""
        target = self.cfg.export
        if target is None:
            return
        p = Path(target)
        existed = p.exists()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)  # as models.save will
            with p.open("ab"):
                pass
        except OSError as exc:
            why = exc.strerror or exc
            raise ConfigError(f"--export {str(target)!r}: cannot create the file ({why})") from None
        if not existed:
            p.unlink(missing_ok=True)

    # ------------------------------------------------------------------ checkpoints

    async def _save_checkpoint(self, next_round: int) -> None:
        """Write w_k, the sampling stream and the counters atomically (hgo_server.checkpoint)."""
        ck = self._checkpoint
        assert ck is not None and self.cfg.checkpoint_dir is not None
        state = ck.State(
            round=next_round,
            weights=self.driver.w.copy(),
            model=self.spec.model,
            dim=self.d,
            config=self.cfg.as_dict(),
            extra={
                "sample_rng": self.driver.sample_rng.bit_generator.state,
                "secret_seed": int(self.secret_seed),
                "rounds_without_quorum": self.driver.rounds_without_quorum,
            },
        )
        path = await self._in_thread(ck.save, Path(self.cfg.checkpoint_dir), state)
        log.info("checkpoint round=%d %s", next_round, path)  # round = the next round to run (0-based)

    def _resume(self) -> None:
        """--resume: continue from the newest valid checkpoint in --checkpoint-dir, if any."""
        ck = self._checkpoint
        assert ck is not None and self.cfg.checkpoint_dir is not None
        try:
            state = ck.load_latest(
                Path(self.cfg.checkpoint_dir), model=self.spec.model, dim=self.d, finite=True
            )
        except ck.CheckpointError as exc:
            raise ConfigError(f"--resume: {exc}") from None
        if state is None:
            log.info("resume: no checkpoint in %s, starting fresh", self.cfg.checkpoint_dir)
            return
        extra = dict(state.extra or {})
        if "secret_seed" in extra and self.cfg.secret_seed is None:
            # the run's own streams continue: C_k and aggregation of the rounds to come
            self.secret_seed = int(extra["secret_seed"])
            settings = driver_settings(self.cfg, self.setup.run, self.cfg.q_for(), self.secret_seed)
            self.driver = RoundDriver(settings, self.setup.w0)
        self.driver.w = np.asarray(state.weights, dtype=np.float64).copy()
        self.start_round = self.round = int(state.round)
        if "sample_rng" in extra:
            self.driver.sample_rng.bit_generator.state = extra["sample_rng"]
        self.driver.rounds_without_quorum = int(extra.get("rounds_without_quorum", 0))
        log.info("resumed from round %d", self.start_round)
