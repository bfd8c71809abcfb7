"""Shared test fixtures: the real data the tests read, and the switch for checks that need the full sets.

The tests read real data from `SHARED_DATA`: `$SKYLOOM_SHARED_DATA` when it names a directory, else
`../shared/data` beside the repository when there is one, else the committed slices in `tests/data/` (byte-exact
prefixes of the same files, see tests/data/README.md) — so a fresh clone passes its own tests. Every test reads
only what the slices hold; the few assertions that only hold on the complete sets (record counts of whole
benchmarks, numbers measured on a whole file) are marked `@full_data_only` and skipped, with the reason, on the
slices.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "data"


def _shared_data() -> Path:
    chosen = os.environ.get("SKYLOOM_SHARED_DATA")  # a path that does not exist means "fresh clone" (CI uses it)
    path = Path(chosen) if chosen else REPO.parent / "shared" / "data"
    return path.resolve() if path.is_dir() else FIXTURE_DATA


SHARED_DATA = _shared_data()
FULL_DATA = SHARED_DATA != FIXTURE_DATA
# commands under test that default to the shared data (eval ppl/bench/leakage, subprocesses) read the same folder
os.environ["SKYLOOM_SHARED_DATA"] = str(SHARED_DATA)

full_data_only = pytest.mark.skipif(
    not FULL_DATA, reason="holds only on the complete data sets; tests/data has slices (set SKYLOOM_SHARED_DATA)"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder the tests read (see the module docstring for which one)."""
    return SHARED_DATA
