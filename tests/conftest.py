"""Shared fixtures: where the verified datasets live, and process hygiene."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.procs import procs  # noqa: F401  (the process-hygiene fixture)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("HGO_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $HGO_SHARED_DATA); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"verified datasets not found at {SHARED_DATA}")
    return SHARED_DATA
