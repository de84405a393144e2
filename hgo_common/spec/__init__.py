"""The run specification, declared once (docs/design.md "The run specification").

* :mod:`~hgo_common.spec.declare` — how a setting is declared (kind, help, unit, constraint);
* :mod:`~hgo_common.spec.types` — :class:`Quorum`, :class:`Deadline`, durations;
* :mod:`~hgo_common.spec.run` — :class:`RunSpec` (what a run is) and :class:`Population`
  (who takes part);
* :mod:`~hgo_common.spec.forms` — parsers, mappings, TOML and docs generated from the
  declarations;
* :mod:`~hgo_common.spec.build` — the one path from a spec to a running round.
"""

from __future__ import annotations

from hgo_common.errors import SpecError

from . import forms as forms
from .build import Run, build_model, build_run, driver_settings, round_config
from .run import SERVER_DEFAULT_Q, Population, RunSpec
from .types import Deadline, Quorum, duration_text, parse_duration_ms

__all__ = [
    "SERVER_DEFAULT_Q",
    "Deadline",
    "Population",
    "Quorum",
    "Run",
    "RunSpec",
    "SpecError",
    "build_model",
    "build_run",
    "driver_settings",
    "duration_text",
    "parse_duration_ms",
    "round_config",
]
