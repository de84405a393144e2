"""Imports every rule module so that each registers itself."""

from __future__ import annotations

from . import (  # noqa: F401
    aksel,
    aksel_coord_authors,
    average,
    bucketing,
    bulyan,
    centered_clipping,
    geometric_median,
    krum,
    krum_coord_authors,
    meamed,
    median,
    multi_krum,
    nnm,
    phocas,
    trimmed_mean,
)
