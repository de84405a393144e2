"""Imports every rule module so that each registers itself."""

from __future__ import annotations

from . import (  # noqa: F401
    aksel,
    average,
    bucketing,
    bulyan,
    centered_clipping,
    geometric_median,
    krum,
    meamed,
    median,
    multi_krum,
    nnm,
    phocas,
    trimmed_mean,
)
