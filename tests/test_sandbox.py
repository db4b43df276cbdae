"""Sandbox mode: jobs stay in memory, no Redis, per-thread and per-task scopes, drain()."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from types import TracebackType

import pytest

from kiq import JobInfo, Kiq, Reporter, Worker, worker
from kiq.errors import ConfigError
from kiq.testing import (
    assert_enqueued,
    clear,
    drain,
    enqueued,
    refute_enqueued,
    sandbox_scope,
    sandboxed,
)

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens: any Redis use would fail

calls: list[object] = []


@worker(queue="mail", retry=2, name="Mailer")
def mailer(addr: str) -> None:
    calls.append(addr)
    if addr == "bounce":
        raise ValueError(f"{addr} bounced")


class Countdown(Worker, name="Countdown"):
    async def perform(self, n: int) -> None:
        await asyncio.sleep(0)
        calls.append(n)
        if n > 0:
            APP.enqueue(Countdown.new(n - 1))


APP = Kiq(NOWHERE, test_mode="sandbox", workers=[mailer, Countdown])


@pytest.fixture(autouse=True)
def fresh() -> None:
    calls.clear()
    clear(APP, scope="shared")


def test_enqueue_keeps_the_wire_payload_and_never_touches_redis() -> None:
    jid = APP.enqueue(mailer.new("ada@example.com"))
    job = assert_enqueued(APP, mailer, args=["ada@example.com"], queue="mail")
    assert job.jid == jid
    assert job.item["class"] == "Mailer" and job.item["retry"] == 2 and "enqueued_at" in job.item
    assert APP._client is None
    with pytest.raises(ConfigError, match="never connects"):
        _ = APP.client
    with pytest.raises(ConfigError, match="drain"):
        APP.start()
    APP.flush()  # nothing buffered: a no-op
    assert APP.buffer_stats() is None


def test_matching_on_any_subset_of_fields() -> None:
    APP.enqueue(mailer.new("a"))
    APP.enqueue(mailer.new("b"), delay=dt.timedelta(minutes=5))
    at = time.time() + 3600
    APP.enqueue_bulk("RubyJob", [[1], [2]], at=at)
    assert_enqueued(APP, "Mailer", args=["b"], delay=300)
    assert_enqueued(APP, class_name="RubyJob", args=[2], queue="default", at=at)
    assert_enqueued(APP, at=dt.datetime.fromtimestamp(at))
    refute_enqueued(APP, mailer, args=["a"], delay=300)
    refute_enqueued(APP, mailer, args=["zzz"])
    refute_enqueued(APP, queue="critical")
    with pytest.raises(AssertionError, match="no enqueued job matches.*enqueued:"):
        assert_enqueued(APP, mailer, queue="default")
    with pytest.raises(AssertionError, match="expected no job"):
        refute_enqueued(APP, "RubyJob")
    assert [j.args for j in enqueued(APP)] == [["a"], ["b"], [1], [2]]


def test_each_thread_sees_its_own_jobs_and_shared_sees_all() -> None:
    seen: dict[str, int] = {}

    def other() -> None:
        APP.enqueue(mailer.new("from-thread"))
        APP.enqueue(mailer.new("from-thread-2"))
        seen["thread"] = len(enqueued(APP))

    APP.enqueue(mailer.new("main"))
    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen["thread"] == 2
    assert [j.args for j in enqueued(APP)] == [["main"]]
    assert len(enqueued(APP, scope="shared")) == 3
    refute_enqueued(APP, args=["from-thread"])
    assert_enqueued(APP, args=["from-thread"], scope="shared")


def test_asyncio_tasks_get_their_own_scope() -> None:
    async def task(name: str) -> list[list[object]]:
        with sandbox_scope():
            await APP.enqueue_async(mailer.new(name))
            await asyncio.sleep(0.01)
            return [j.args for j in enqueued(APP)]

    async def main() -> list[list[list[object]]]:
        return list(await asyncio.gather(task("t1"), task("t2"), task("t3")))

    assert asyncio.run(main()) == [[["t1"]], [["t2"]], [["t3"]]]
    assert len(enqueued(APP, scope="shared")) == 3


def test_drain_runs_jobs_through_the_worker_code_with_retries() -> None:
    APP.enqueue(mailer.new("ok"))
    APP.enqueue(mailer.new("later"), delay=3600)  # scheduled jobs run too
    APP.enqueue(mailer.new("bounce"))
    runs = drain(APP)
    # "bounce": first run + 2 retries, then dead (Sidekiq's retry rules, backoff skipped)
    assert calls.count("bounce") == 3 and runs == 5
    assert enqueued(APP) == []
    [dead] = enqueued(APP, state="dead")
    assert dead.item["retry_count"] == 2 and dead.item["error_class"] == "ValueError"
    assert dead.item["error_message"] == "bounce bounced"


def test_drain_without_retries_leaves_the_failed_job_in_the_retry_state() -> None:
    APP.enqueue(mailer.new("bounce"))
    assert drain(APP, retries=False) == 1
    [job] = enqueued(APP, state="retry")
    assert job.item["retry_count"] == 0 and job.at is not None and job.at > time.time()


def test_drain_runs_async_jobs_and_the_jobs_they_enqueue() -> None:
    APP.enqueue(Countdown.new(3))
    assert drain(APP) == 4
    assert calls == [3, 2, 1, 0]
    assert enqueued(APP, state=None) == []


def test_drain_tells_the_reporters() -> None:
    events: list[str] = []

    class Events(Reporter):
        def handle_success(self, job: JobInfo, elapsed: float) -> None:
            events.append(f"ok {job.args[0]}")

        def handle_failure(self, job: JobInfo, error: BaseException, traceback: TracebackType | None) -> None:
            events.append(f"failed {job.args[0]}")

    app = Kiq(NOWHERE, test_mode="sandbox", workers=[mailer], extra_reporters=[Events()])
    app.enqueue(mailer.new("x"))
    app.enqueue(mailer.new("bounce"))
    drain(app)
    assert events == ["ok x", "failed bounce", "failed bounce", "failed bounce"]


def test_unknown_class_goes_through_the_retry_path() -> None:
    APP.enqueue_all([mailer.new("y"), Countdown.new(0)])
    APP.enqueue_bulk("NoSuchJob", [[1]])
    drain(APP, retries=False)
    [job] = enqueued(APP, state="retry")
    assert job.class_name == "NoSuchJob" and job.item["error_class"] == "kiq.errors.UnknownWorkerError"


def test_sandboxed_switches_an_existing_app_for_a_block() -> None:
    app = Kiq(NOWHERE, workers=[mailer])
    assert app.test_mode is None
    with sandboxed(app):
        assert app.test_mode == "sandbox"
        app.enqueue(mailer.new("inside"))
        assert_enqueued(app, mailer, args=["inside"])
        drain(app)
        assert calls == ["inside"]
    assert app.test_mode is None and app._client is None


def test_bad_uses_are_clear() -> None:
    with pytest.raises(ConfigError, match="test_mode"):
        Kiq(test_mode="fake")
    with pytest.raises(ConfigError, match="sandbox mode"):
        enqueued(Kiq(NOWHERE))
    with pytest.raises(ConfigError, match="scope"):
        enqueued(APP, scope="mine")
    with pytest.raises(ConfigError, match="expected a worker"):
        assert_enqueued(APP, 42)  # type: ignore[arg-type]


def test_a_misspelt_field_is_an_error_not_a_match() -> None:
    APP.enqueue(mailer.new("a"))
    with pytest.raises(ConfigError, match="unknown field.*qeue"):
        refute_enqueued(APP, mailer, qeue="mail")  # type: ignore[call-arg]
