"""Reporters, instrumentation hooks and structured logs."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from types import TracebackType

import pytest

from kiq import JobInfo, Reporter, Worker, current_job, worker
from kiq.logs import JobContextFilter, JsonFormatter, PlainFormatter
from support import wait_for


class Recording(Reporter):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.lock = threading.Lock()

    def add(self, kind: str, job: JobInfo, extra: object = None) -> None:
        with self.lock:
            self.events.append((kind, job.jid, extra))

    def handle_started(self, job: JobInfo) -> None:
        self.add("started", job)

    def handle_success(self, job: JobInfo, elapsed: float) -> None:
        self.add("success", job, elapsed)

    def handle_failure(self, job: JobInfo, error: BaseException, traceback: TracebackType | None) -> None:
        self.add("failure", job, (type(error).__name__, traceback is not None))

    def handle_aborted(self, job: JobInfo, reason: str) -> None:
        self.add("aborted", job, reason)

    def handle_stopped(self, job: JobInfo) -> None:
        self.add("stopped", job)


@worker(name="Maybe", retry=False)
def maybe(ok: bool) -> None:
    if not ok:
        raise ValueError("nope")


def test_events_arrive_in_order_for_each_job(make_app, r):
    rec = Recording()
    app = make_app(workers=[maybe], extra_reporters=[rec])
    jids = app.enqueue_bulk(maybe, [[True], [False], [True]])
    app.start()
    wait_for(lambda: len(rec.events) == 9, what="9 events")
    for jid, ok in zip(jids, [True, False, True]):
        kinds = [k for k, j, _ in rec.events if j == jid]
        assert kinds == ["started", "success" if ok else "failure", "stopped"]
    failure = next(e for k, _, e in rec.events if k == "failure")
    assert failure == ("ValueError", True)
    assert all(isinstance(e, float) and e >= 0 for k, _, e in rec.events if k == "success")


def test_failure_lines_say_where_the_job_went_and_death_handlers_run(make_app, r, caplog):
    class Deaths(Recording):
        def handle_death(self, job: JobInfo, error: BaseException) -> None:
            self.add("death", job, f"{type(error).__name__}: {error}")

    @worker(name="Doomed", retry=0)
    def doomed(n: int) -> None:
        raise ValueError(f"no {n}")

    @worker(name="Flaky", retry=3)
    def flaky(n: int) -> None:
        raise KeyError(n)

    rec = Deaths()
    app = make_app(workers=[doomed, flaky, maybe], extra_reporters=[rec])
    dead, retrying, dropped = app.enqueue(doomed.new(1)), app.enqueue(flaky.new(2)), app.enqueue(maybe.new(False))
    with caplog.at_level(logging.WARNING, logger="kiq"):
        app.start()
        wait_for(lambda: len(rec.events) == 10, what="10 events")
        app.stop()
    assert [k for k, j, _ in rec.events if j == dead] == ["started", "failure", "death", "stopped"]
    assert ("death", dead, "ValueError: no 1") in rec.events
    assert [k for k, j, _ in rec.events if j in (retrying, dropped)].count("death") == 0
    assert r.zcard("dead") == 1 and r.zcard("retry") == 1

    def line(event: str, jid: str) -> logging.LogRecord:
        return next(x for x in caplog.records if getattr(x, "kiq", {}).get("event") == event and x.kiq["jid"] == jid)

    retry = line("job_failure", retrying)
    [(_, score)] = r.zrange("retry", 0, -1, withscores=True)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(score))
    assert f"error=KeyError: 2; retry 1 of 3 at {when} (in " in retry.getMessage()
    assert retry.getMessage().endswith("s), retry_count=0")
    assert (retry.kiq["retry_count"], retry.kiq["retry"], retry.kiq["next_retry_at"]) == (0, "1/3", when)
    died = line("job_failure", dead)
    assert died.getMessage().endswith("out of retries (0 of 0), moved to the dead set, retry_count=0")
    assert died.kiq["went"] == "dead"
    tomb = line("job_dead", dead)
    assert tomb.levelno == logging.WARNING
    assert tomb.getMessage() == f"job_dead Doomed jid={dead} queue=default error=ValueError: no 1 (retry_count=0)"
    assert line("job_failure", dropped).getMessage().endswith("not retried (retry: false), dropped")
    assert [x.kiq["jid"] for x in caplog.records if getattr(x, "kiq", {}).get("event") == "job_dead"] == [dead]


def test_a_reporter_that_always_raises_breaks_nothing_and_logs_once(make_app, r, caplog):
    class Broken(Reporter):
        def handle_started(self, job: JobInfo) -> None:
            raise RuntimeError("reporter bug")

        handle_stopped = handle_started  # type: ignore[assignment]

        def handle_success(self, job: JobInfo, elapsed: float) -> None:
            raise RuntimeError("reporter bug")

    caplog.set_level(logging.ERROR, logger="kiq")
    app = make_app(workers=[maybe], extra_reporters=[Broken()])
    app.enqueue_bulk(maybe, [[True]] * 50)
    app.start()
    wait_for(lambda: r.get("stat:processed") == "50", what="all 50 jobs")
    app.stop()
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [e.getMessage() for e in errors]
    assert "Broken" in errors[0].getMessage() and errors[0].exc_info is not None
    assert r.get("stat:failed") is None


def test_a_slow_reporter_never_slows_jobs_down(make_app, r):
    class Slow(Reporter):
        def handle_started(self, job: JobInfo) -> None:
            time.sleep(1)

    app = make_app(workers=[maybe], extra_reporters=[Slow()])
    app.enqueue_bulk(maybe, [[True]] * 200)
    t0 = time.monotonic()
    app.start()
    wait_for(lambda: r.get("stat:processed") == "200", what="200 jobs")
    assert time.monotonic() - t0 < 5


def test_aborted_at_a_stop_deadline(make_app, r):
    rec = Recording()

    class Spin(Worker, name="Spin"):
        def perform(self) -> None:
            while True:
                time.sleep(0.01)

    app = make_app(workers=[Spin], extra_reporters=[rec])
    jid = app.enqueue(Spin.new())
    app.start()
    wait_for(lambda: rec.events, what="started")
    app.stop(timeout=0.2)
    assert [(k, e) for k, j, e in rec.events if j == jid] == [("started", None), ("aborted", "shutdown"),
                                                             ("stopped", None)]


def test_instrumentation_hooks(make_app, r):
    seen: list[tuple[str, dict, dict]] = []
    app = make_app(workers=[maybe])
    app.instrument.attach(lambda e, m, md: seen.append((e, m, md)))
    only_failures: list[str] = []
    app.instrument.attach(lambda e, m, md: only_failures.append(md["error"]), events=["job.failure"])
    app.enqueue_bulk(maybe, [[True], [False]])
    app.start()
    wait_for(lambda: len(seen) == 4, what="4 events")
    events = sorted(e for e, _, _ in seen)
    assert events == ["job.failure", "job.started", "job.started", "job.success"]
    success = next(x for x in seen if x[0] == "job.success")
    assert set(success[1]) == {"timing"} and success[2] == {"class": "Maybe", "queue": "default"}
    failure = next(x for x in seen if x[0] == "job.failure")
    assert failure[1] == {"value": 1} and failure[2]["error"] == "ValueError"
    assert only_failures == ["ValueError"]
    with pytest.raises(Exception, match="unknown instrumentation events"):
        app.instrument.attach(print, events=["job.nope"])


def test_json_log_lines_and_per_job_context(make_app, r):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobContextFilter())
    log = logging.getLogger("kiq")
    user = logging.getLogger("myapp")
    log.addHandler(handler)
    user.addHandler(handler)
    log.setLevel(logging.INFO)
    user.setLevel(logging.INFO)
    contexts = []

    class Logs(Worker, name="Logs", queue="default"):
        def perform(self, ok: bool) -> None:
            contexts.append(current_job())
            user.info("charging card")
            if not ok:
                raise KeyError("card")

    try:
        app = make_app(workers=[Logs])
        jid_ok = app.enqueue(Logs.new(True))
        jid_bad = app.enqueue(Logs.new(False))
        app.start()
        wait_for(lambda: r.get("stat:processed") == "2", what="2 jobs")
        app.stop()
    finally:
        log.removeHandler(handler)
        user.removeHandler(handler)
        log.setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert all(line["source"] == "kiq" for line in lines)
    events = {(line.get("event"), line.get("jid")) for line in lines if line.get("event")}
    assert {("job_started", jid_ok), ("job_success", jid_ok), ("job_started", jid_bad), ("job_failure", jid_bad)} <= events
    success = next(line for line in lines if line.get("event") == "job_success")
    assert success["class"] == "Logs" and success["queue"] == "default" and success["elapsed"] >= 0
    failure = next(line for line in lines if line.get("event") == "job_failure")
    assert failure["error"] == "KeyError" and failure["level"] == "warning" and "exception" in failure
    mine = [line for line in lines if line["logger"] == "myapp"]
    assert {m["jid"] for m in mine} == {jid_ok, jid_bad} and all(m["class"] == "Logs" for m in mine)
    assert {c.jid for c in contexts} == {jid_ok, jid_bad} and current_job() is None


def test_plain_formatter_and_root_logger_untouched(make_app, r):
    root_handlers = list(logging.getLogger().handlers)
    record = logging.LogRecord("kiq", logging.INFO, __file__, 1, "job_success %s", ("X",), None)
    record.kiq = {"event": "job_success", "class": "X", "jid": "j", "queue": "q", "elapsed": 0.5}
    line = PlainFormatter().format(record)
    assert line.endswith("INFO kiq job_success class=X jid=j queue=q elapsed=0.5")
    make_app().start()
    assert logging.getLogger().handlers == root_handlers
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("kiq").handlers)


def test_core_log_level_follows_the_kiq_logger_after_start(make_app, r, caplog):
    """The core's records follow the ``kiq`` logger's level as it is now, not
    as it was when some app started (no process-wide level set by the last app)."""
    import logging

    log = logging.getLogger("kiq")
    old = log.level
    log.setLevel(logging.WARNING)
    try:
        app = make_app(heartbeat_interval=0.2)
        app.start()
        log.setLevel(logging.INFO)
        caplog.set_level(logging.INFO, logger="kiq")
        time.sleep(1.5)  # the pump re-reads the level every second
        r.lpush(f"{app.identity}-signals", "TSTP")
        wait_for(lambda: any("got TSTP from Redis" in m for m in caplog.messages), what="the core's INFO record")
    finally:
        log.setLevel(old)
