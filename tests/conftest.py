"""Shared test fixtures.

Third-party data lives in ``../shared/data`` beside the repository (never copied into it); tests that
need it use the ``shared_data`` fixture, which skips with a clear reason when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (third-party data lives beside the repo, not in it)")
    return SHARED_DATA
