"""Shared test fixtures: the real data beside the repo, and single-threaded torch for stable timings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SKYLOOM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (override with SKYLOOM_SHARED_DATA); tests that need it fail loudly without it."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set SKYLOOM_SHARED_DATA)")
    return SHARED_DATA
