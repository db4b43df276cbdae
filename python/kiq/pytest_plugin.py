"""kiq's pytest plugin (loaded automatically once kiq is installed).

**Sandboxed by default.** While pytest runs, every :class:`~kiq.Kiq` built
without ``test_mode`` (at import, in a fixture or in a test) is sandboxed:
enqueued jobs stay in memory and Redis is never contacted, so a test cannot
write to a developer's or CI's real Redis by accident (Sidekiq's
``require "sidekiq/testing"`` does the same). A test opts into a live Redis by
using the ``kiq_redis`` or ``kiq_app`` fixture, or with
``@pytest.mark.kiq_live``; apps built during that test talk to Redis (apps
built earlier, such as a module-level ``app``, stay sandboxed: build the one
the test runs inside it). The ini option ``kiq_test_mode = live`` flips the
default for a project whose tests all want Redis.

Fixtures:

``kiq_sandbox``
    A :class:`~kiq.Kiq` in sandbox mode, empty for each test. With the ini
    option ``kiq_app = "myproject.jobs:app"`` it is *your* app, sandboxed for
    the test (so code that enqueues through it is captured); otherwise a fresh
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
from kiq.sandbox import default_mode
from kiq.testing import sandboxed

__all__ = ["kiq_app", "kiq_redis", "kiq_sandbox"]

#: What the default is called in messages.
WHY = "kiq's pytest plugin"
#: Fixtures that make a test live.
LIVE_FIXTURES = frozenset({"kiq_redis", "kiq_app"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("kiq_app", "module:attribute of the Kiq app the kiq_sandbox fixture sandboxes", default="")
    parser.addini(
        "kiq_test_mode",
        'Kiq apps built while tests run: "sandbox" (the default; jobs stay in memory) or "live" (they talk to '
        "Redis). Tests using kiq_redis / kiq_app or marked kiq_live are always live.",
        default="sandbox",
    )


def _sandbox_by_default(config: pytest.Config) -> bool:
    mode = str(config.getini("kiq_test_mode") or "sandbox").strip()
    if mode not in ("sandbox", "live"):
        raise pytest.UsageError(f'kiq_test_mode must be "sandbox" or "live", not {mode!r}')
    return mode == "sandbox"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kiq_live: Kiq apps built during this test talk to Redis (not sandboxed)")
    # From here on (collection imports the user's modules): the project's default.
    default_mode.sandbox, default_mode.why = _sandbox_by_default(config), WHY


def pytest_unconfigure(config: pytest.Config) -> None:
    default_mode.sandbox, default_mode.why = False, ""


@pytest.fixture(autouse=True)
def _kiq_test_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    """Sandbox or live for the apps this test builds (autouse: set before other fixtures run)."""
    live = request.node.get_closest_marker("kiq_live") is not None or bool(LIVE_FIXTURES & set(request.fixturenames))
    with default_mode.set(not live and _sandbox_by_default(request.config), WHY):
        yield


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
