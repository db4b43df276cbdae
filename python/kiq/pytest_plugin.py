"""kiq's pytest plugin (loaded automatically once kiq is installed).

Fixtures:

``kiq_sandbox``
    A :class:`~kiq.Kiq` in sandbox mode, empty for each test: enqueued jobs
    stay in memory and Redis is never contacted. With the ini option
    ``kiq_app = "myproject.jobs:app"`` it is *your* app, sandboxed for the
    test (so code that enqueues through it is captured); otherwise a fresh
    app, to which you ``register`` the workers under test. Use it with
    :mod:`kiq.testing` (``assert_enqueued``, ``drain``...).

``kiq_redis``
    A real redis-server on a free loopback port, started once per session
    and emptied before each test: ``kiq_redis.url``, ``kiq_redis.port``.

``kiq_app``
    A :class:`~kiq.Kiq` connected to ``kiq_redis`` (not started; enqueue to
    it, or ``with kiq_app: ...`` to run workers).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kiq.app import Kiq
from kiq.errors import ConfigError
from kiq.loader import load_app
from kiq.redis_server import RedisServer
from kiq.testing import sandboxed

__all__ = ["kiq_app", "kiq_redis", "kiq_sandbox"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("kiq_app", "module:attribute of the Kiq app the kiq_sandbox fixture sandboxes", default="")


@pytest.fixture
def kiq_sandbox(request: pytest.FixtureRequest) -> Iterator[Kiq]:
    """A sandboxed Kiq, empty for this test."""
    target = str(request.config.getini("kiq_app") or "")
    if not target:
        yield Kiq(test_mode="sandbox")
        return
    try:
        app = load_app(target)
    except ConfigError as exc:
        raise pytest.UsageError(f"kiq_app = {target!r}: {exc}") from exc
    with sandboxed(app):
        yield app


@pytest.fixture(scope="session")
def _kiq_redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def kiq_redis(_kiq_redis_server: RedisServer) -> RedisServer:
    """A real redis-server on a free port, emptied before the test."""
    _kiq_redis_server.flushall()
    return _kiq_redis_server


@pytest.fixture
def kiq_app(kiq_redis: RedisServer) -> Iterator[Kiq]:
    """A Kiq on ``kiq_redis``; stopped (and its buffer flushed) after the test."""
    app = Kiq(kiq_redis.url, shutdown_timeout=5)
    yield app
    app.stop()
