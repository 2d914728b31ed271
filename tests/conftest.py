"""Fixtures shared by all test folders: the real-data location and its skip rule."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skips the test (with the reason) when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (tests marked realdata need ../shared/data)")
    return SHARED_DATA
