"""Imports every rule module so that each registers itself."""

from __future__ import annotations

from . import average, median  # noqa: F401
