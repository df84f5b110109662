"""Shared test helpers: where the real captures live, and skipping cleanly when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
#: Real captures of a Linux 6.18 machine (read-only, beside the repository).
FIXTURES = Path(os.environ.get("MEMDESC_FIXTURES", REPO.parent / "shared" / "fixtures"))
SNAPSHOTS = ("snapshot-idle", "snapshot-idle-early")

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def fixture_dir(name: str) -> Path:
    """Path of a shared fixture folder, or skip the test saying what is missing."""
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"real fixture {path} is absent "
                    "(set MEMDESC_FIXTURES to the shared/fixtures folder)")
    return path


@pytest.fixture(params=SNAPSHOTS)
def snapshot_dir(request) -> Path:
    """Each real snapshot folder in turn."""
    return fixture_dir(request.param)
