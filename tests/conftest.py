"""Fixtures: one redis-server per test session (started by kiq's pytest
plugin on a free loopback port), flushed before every test, and Kiq apps that are stopped
after the test that made them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from kiq import Kiq
from support import RedisServer


@pytest.fixture(scope="session")
def redis_server(_kiq_redis_server: RedisServer) -> RedisServer:
    """The session's redis-server: the one kiq's pytest plugin starts (loopback, a free port)."""
    return _kiq_redis_server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def rb(redis_server: RedisServer, r: redis.Redis) -> Iterator[redis.Redis]:
    """Like ``r`` but returning bytes, for payloads that are not UTF-8."""
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def make_app(redis_url: str, r: redis.Redis) -> Iterator[Callable[..., Kiq]]:
    apps: list[Kiq] = []

    def make(**kwargs: Any) -> Kiq:
        kwargs.setdefault("poll_interval_average", 0.1)
        kwargs.setdefault("shutdown_timeout", 5)
        app = Kiq(kwargs.pop("redis_url", redis_url), **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop(1)
