"""The pytest plugin, used the way a user would: in a project of its own, run by pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

APP_MODULE = '''
from kiq import Kiq, Worker

class WelcomeMail(Worker, queue="mail", retry=3, name="WelcomeMail"):
    sent: list[str] = []

    def perform(self, address: str) -> None:
        if "@" not in address:
            raise ValueError(f"not an address: {address}")
        WelcomeMail.sent.append(address)

class Nightly(Worker, name="Nightly"):
    async def perform(self, day: str) -> None:
        app.enqueue(WelcomeMail.new(f"report-{day}@example.com"))

app = Kiq(workers=[WelcomeMail, Nightly])   # $REDIS_URL: nothing listens there

def signup(address: str) -> None:
    app.enqueue(WelcomeMail.new(address))
    app.enqueue(WelcomeMail.new(address), delay=86400)   # the follow-up, a day later
'''

SANDBOX_TESTS = '''
import threading

import pytest

import jobs
from kiq import Kiq
from kiq.testing import assert_enqueued, drain, enqueued, refute_enqueued


def test_signup_enqueues_the_welcome_mail(kiq_sandbox: Kiq) -> None:
    assert kiq_sandbox is jobs.app and kiq_sandbox.test_mode == "sandbox"
    jobs.signup("ada@example.com")
    assert_enqueued(kiq_sandbox, jobs.WelcomeMail, args=["ada@example.com"], queue="mail")
    assert_enqueued(kiq_sandbox, jobs.WelcomeMail, delay=86400)
    refute_enqueued(kiq_sandbox, jobs.WelcomeMail, args=["bob@example.com"])


def test_each_test_starts_empty(kiq_sandbox: Kiq) -> None:
    assert enqueued(kiq_sandbox, scope="shared") == []


def test_drain_runs_the_real_worker(kiq_sandbox: Kiq) -> None:
    jobs.WelcomeMail.sent.clear()
    jobs.signup("ada@example.com")
    kiq_sandbox.enqueue(jobs.Nightly.new("monday"))
    drain(kiq_sandbox)
    assert sorted(jobs.WelcomeMail.sent) == ["ada@example.com", "ada@example.com", "report-monday@example.com"]


def test_failures_follow_the_retry_rules(kiq_sandbox: Kiq) -> None:
    jobs.signup("nobody")
    drain(kiq_sandbox)
    dead = enqueued(kiq_sandbox, state="dead")
    assert [(j.error_class, j.error_message, j.retry_count) for j in dead] == [
        ("ValueError", "not an address: nobody", 3)] * 2


def test_the_readme_test_registering_the_apps_own_worker(kiq_sandbox: Kiq) -> None:
    kiq_sandbox.register(jobs.WelcomeMail)   # already registered by jobs.app: a no-op
    jobs.signup("ada@example.com")
    assert_enqueued(kiq_sandbox, jobs.WelcomeMail, args=["ada@example.com"], queue="mail")


def test_a_thread_has_its_own_jobs(kiq_sandbox: Kiq) -> None:
    t = threading.Thread(target=jobs.signup, args=["t@example.com"])
    t.start()
    t.join()
    refute_enqueued(kiq_sandbox, jobs.WelcomeMail)
    assert_enqueued(kiq_sandbox, jobs.WelcomeMail, args=["t@example.com"], scope="shared")


def test_apps_outside_the_fixture_are_sandboxed_too() -> None:
    assert jobs.app.test_mode == "sandbox"   # built at import, while pytest ran
    jobs.app.enqueue(jobs.WelcomeMail.new("x@example.com"), sync=True)   # Redis is not there: kept in memory
    assert_enqueued(jobs.app, jobs.WelcomeMail, args=["x@example.com"])
'''

REDIS_TESTS = '''
import time

from kiq import Kiq
from kiq.redis_server import RedisServer

import jobs


def test_with_a_real_redis(kiq_redis: RedisServer, kiq_app: Kiq) -> None:
    assert kiq_app.redis_url == kiq_redis.url
    jobs.WelcomeMail.sent.clear()
    kiq_app.register(jobs.WelcomeMail)
    kiq_app.queues = {"mail": 2}
    kiq_app.enqueue(jobs.WelcomeMail.new("real@example.com"), sync=True)
    with kiq_app:
        deadline = time.monotonic() + 10
        while not jobs.WelcomeMail.sent and time.monotonic() < deadline:
            time.sleep(0.02)
    assert jobs.WelcomeMail.sent == ["real@example.com"]


def test_emptied_between_tests(kiq_redis: RedisServer, kiq_app: Kiq) -> None:
    assert kiq_app.client.command("DBSIZE") == 0
'''


def project(tmp_path: Path, tests: str, ini: str) -> Path:
    (tmp_path / "jobs.py").write_text(textwrap.dedent(APP_MODULE))
    (tmp_path / "test_user.py").write_text(textwrap.dedent(tests))
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    return tmp_path


def run_pytest(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=root, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )


def test_user_sandbox_tests_pass_with_redis_stopped(tmp_path: Path) -> None:
    root = project(tmp_path, SANDBOX_TESTS, "kiq_app = jobs:app")
    # Nothing listens on port 1, and no redis-server could be started either.
    out = run_pytest(root, REDIS_URL="redis://127.0.0.1:1/0", KIQ_REDIS_SERVER="/nonexistent/redis-server")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "7 passed" in out.stdout


def test_user_tests_against_the_plugins_redis_server(tmp_path: Path) -> None:
    root = project(tmp_path, REDIS_TESTS, "")
    out = run_pytest(root, REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout


DEFAULT_TESTS = '''
import os

import pytest
import redis

from kiq import Kiq, Worker
from kiq.errors import ConfigError
from kiq.testing import assert_enqueued

import jobs


class Report(Worker, name="Report"):
    def perform(self, day: str) -> None:
        pass


def test_an_app_built_in_a_test_is_sandboxed() -> None:
    app = Kiq(workers=[Report])            # $REDIS_URL: nothing listens there
    assert app.test_mode == "sandbox"
    Report.perform_async("monday")
    assert_enqueued(app, Report, args=["monday"])
    with pytest.raises(ConfigError, match="kiq_live"):
        app.start()


@pytest.mark.kiq_live
def test_a_test_marked_kiq_live_talks_to_redis() -> None:
    app = Kiq(os.environ["LIVE_URL"])
    assert app.test_mode is None
    app.enqueue(Report.new("tuesday"), sync=True)
    assert jobs.app.test_mode == "sandbox", "apps built before the test stay sandboxed"


def test_kiq_app_is_live(kiq_app: Kiq) -> None:
    assert kiq_app.test_mode is None and Kiq().test_mode is None
'''

LIVE_DEFAULT_TESTS = '''
import pytest

from kiq import Kiq
from kiq.errors import ConnectionError

import jobs


def test_live_by_choice() -> None:
    assert jobs.app.test_mode is None
    with pytest.raises(ConnectionError):
        Kiq(buffer=False).enqueue(jobs.WelcomeMail.new("x@example.com"))
'''


def test_by_default_a_user_projects_apps_are_sandboxed(tmp_path: Path, redis_server, r) -> None:
    root = project(tmp_path, DEFAULT_TESTS, "")
    out = run_pytest(root, REDIS_URL="redis://127.0.0.1:1/0", LIVE_URL=redis_server.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 passed" in out.stdout
    [payload] = r.lrange("queue:default", 0, -1)
    assert '"Report"' in payload and '"tuesday"' in payload, "only the kiq_live test reached Redis"


def test_kiq_test_mode_live_flips_the_default(tmp_path: Path) -> None:
    root = project(tmp_path, LIVE_DEFAULT_TESTS, "kiq_test_mode = live")
    out = run_pytest(root, REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    bad = project(tmp_path, LIVE_DEFAULT_TESTS, "kiq_test_mode = maybe")
    out = run_pytest(bad)
    assert out.returncode != 0 and 'kiq_test_mode must be "sandbox" or "live"' in out.stdout + out.stderr


def test_a_bad_kiq_app_setting_is_a_usage_error(tmp_path: Path) -> None:
    root = project(tmp_path, "def test_x(kiq_sandbox):\n    pass\n", "kiq_app = jobs:nope")
    out = run_pytest(root)
    assert out.returncode != 0
    assert "module 'jobs' has no attribute 'nope'" in out.stdout + out.stderr


def test_the_examples_tests_pass_without_redis() -> None:
    examples = Path(__file__).parent.parent / "examples"
    out = run_pytest(examples, REDIS_URL="redis://127.0.0.1:1/0", KIQ_REDIS_SERVER="/nonexistent/redis-server")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout
