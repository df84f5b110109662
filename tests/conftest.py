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

#: Examples per property under the CI profile (.ci/run loads it: HYPOTHESIS_PROFILE unset).
CI_EXAMPLES = 60
settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n_ci: int) -> int:
    """max_examples of a property that runs ``n_ci`` examples under the CI profile (fewer
    than CI_EXAMPLES where each example is costly), scaled to the loaded profile (dev: 25/60
    of it), at least 1: no property hard-codes a count the profile cannot reach."""
    return max(1, round(n_ci * settings.default.max_examples / CI_EXAMPLES))


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
