"""Settings reach the parts they configure."""

from __future__ import annotations

import pytest

from rewardpoints.config import Settings
from rewardpoints.db import create_engine


async def test_pool_timeout_comes_from_the_environment(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARDPOINTS_DATABASE_URL", pg_url)
    monkeypatch.setenv("REWARDPOINTS_DATABASE_POOL_TIMEOUT_SECONDS", "2.5")
    engine = create_engine(Settings(_env_file=None))  # type: ignore[call-arg]
    try:
        assert engine.pool.timeout() == 2.5  # type: ignore[attr-defined]
    finally:
        await engine.dispose()
