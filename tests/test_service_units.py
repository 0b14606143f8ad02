"""Small pure functions of the service (no Redis, no engine)."""

import os

import pytest

from service.engine import cpu_bind
from service.settings import Settings


def test_cpu_bind():
    cpus = sorted(os.sched_getaffinity(0))
    assert cpu_bind("all") in (f"{cpus[0]}-{cpus[-1]}", "auto")
    assert cpu_bind("auto") == "auto" and cpu_bind("0-3") == "0-3"


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/1")
    monkeypatch.setenv("HATREC_MAX_IN_FLIGHT", "7")
    settings = Settings()
    assert settings.redis_url == "redis://example:6379/1" and settings.max_in_flight == 7
    monkeypatch.setenv("HATREC_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValueError, match="max_in_flight"):
        Settings()
