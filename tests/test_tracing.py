"""OpenTelemetry traces through jobs: the keys Ruby's Sidekiq instrumentation uses, both ways."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kiq import Job, Kiq, Worker, worker
from kiq.errors import ConfigError
from kiq.testing import drain
from support import require_ruby, ruby, sidekiq_server, wait_for

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)
tracer = trace.get_tracer("tests")


@pytest.fixture(autouse=True)
def _clear() -> Iterator[None]:
    EXPORTER.clear()
    yield
    EXPORTER.clear()


def spans(name: str) -> list[Any]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


class Traced(Worker, name="Traced", queue="traced"):
    seen: list[dict[str, Any]] = []

    def perform(self, fail: bool = False) -> None:
        with tracer.start_as_current_span("inside perform") as span:
            Traced.seen.append({"trace_id": span.get_span_context().trace_id, "tenant": baggage.get_baggage("tenant")})
        if fail:
            raise RuntimeError("traced failure")


@worker(name="AsyncTraced", queue="traced")
async def async_traced() -> None:
    await asyncio.sleep(0)
    with tracer.start_as_current_span("inside async perform"):
        pass


@pytest.fixture(autouse=True)
def _reset() -> None:
    Traced.seen = []


def enqueue_in_request(app: Kiq, job: Job) -> tuple[int, str]:
    """Enqueues inside a 'request' span with baggage; returns its trace id and the jid."""
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("request") as request:
            jid = app.enqueue(job)
        return request.get_span_context().trace_id, jid
    finally:
        context.detach(token)


def test_link_mode_links_the_job_to_its_enqueuer_and_carries_baggage(make_app, r) -> None:
    app = make_app(queues={"traced": 2}, workers=[Traced], tracing="link")
    request_trace, jid = enqueue_in_request(app, Traced.new())
    app.flush()
    payload = json.loads(r.lindex("queue:traced", 0))
    publish = spans("traced publish")[0]
    assert publish.parent.span_id == spans("request")[0].get_span_context().span_id
    assert publish.kind == trace.SpanKind.PRODUCER and publish.attributes["messaging.message_id"] == jid
    ctx = publish.get_span_context()
    assert payload["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    assert payload["baggage"] == "tenant=acme"
    app.start()
    wait_for(lambda: spans("traced process"), what="the process span")
    process = spans("traced process")[0]
    assert process.kind == trace.SpanKind.CONSUMER and process.parent is None, "a trace of its own"
    assert [link.context.span_id for link in process.links] == [ctx.span_id]
    assert process.attributes["messaging.sidekiq.job_class"] == "Traced"
    inside = spans("inside perform")[0]
    assert inside.parent.span_id == process.get_span_context().span_id
    assert Traced.seen == [{"trace_id": process.get_span_context().trace_id, "tenant": "acme"}]
    assert process.get_span_context().trace_id != request_trace


def test_child_mode_continues_the_trace_and_records_failures(make_app) -> None:
    app = make_app(queues={"traced": 2}, workers=[Traced, async_traced], tracing="child")
    request_trace, _ = enqueue_in_request(app, Traced.new(True))
    app.enqueue(async_traced.new())
    app.start()
    wait_for(lambda: spans("traced process") and len(spans("traced process")) == 2, what="both process spans")
    failed = next(s for s in spans("traced process") if s.attributes["messaging.sidekiq.job_class"] == "Traced")
    assert failed.get_span_context().trace_id == request_trace
    assert failed.status.status_code == trace.StatusCode.ERROR
    assert failed.events[0].name == "exception" and "traced failure" in failed.events[0].attributes["exception.message"]
    async_process = next(s for s in spans("traced process") if s.attributes["messaging.sidekiq.job_class"] == "AsyncTraced")
    inside = spans("inside async perform")[0]
    assert inside.parent.span_id == async_process.get_span_context().span_id, "async jobs see the span too"


def test_ruby_traceparent_is_read_and_kiq_s_is_read_by_ruby(make_app, redis_url, r) -> None:
    require_ruby()
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    ruby(
        f"""
        Sidekiq::Client.push("class" => "Traced", "queue" => "traced", "args" => [],
                             "traceparent" => "00-{trace_id}-{span_id}-01", "baggage" => "tenant=ruby")
        """,
        redis_url,
    )
    app = make_app(queues={"traced": 1}, workers=[Traced], tracing="child")
    app.start()
    wait_for(lambda: spans("traced process"), what="the process span")
    process = spans("traced process")[0]
    assert f"{process.get_span_context().trace_id:032x}" == trace_id
    assert f"{process.parent.span_id:016x}" == span_id
    assert Traced.seen[0]["tenant"] == "ruby"
    app.stop()

    workers_rb = """
    class RubyTraced
      include Sidekiq::Worker
      def perform
        Sidekiq.redis { |c| c.rpush("trace:seen", JSON.generate([jid, @traceparent])) }
      end
    end
    class TraceparentReader
      def call(worker, job, queue)
        worker.instance_variable_set(:@traceparent, job["traceparent"])
        yield
      end
    end
    Sidekiq.configure_server { |c| c.server_middleware { |chain| chain.add TraceparentReader } }
    """
    _, jid = enqueue_in_request(app, Job("RubyTraced", queue="rb"))
    app.flush()
    with sidekiq_server(redis_url, workers_rb, "-q", "rb", "-c", "1"):
        wait_for(lambda: r.llen("trace:seen") == 1, timeout=40, what="Ruby to run the job")
    seen_jid, traceparent = json.loads(r.lindex("trace:seen", 0))
    ctx = spans("rb publish")[0].get_span_context()
    assert (seen_jid, traceparent) == (jid, f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}")


def test_bulk_sandbox_and_drain_trace_too() -> None:
    app = Kiq(test_mode="sandbox", workers=[Traced], tracing="link")
    with tracer.start_as_current_span("request"):
        app.enqueue_bulk(Traced, [[], []])
    publish = spans("traced publish")[0]
    assert publish.attributes["messaging.batch.message_count"] == 2
    assert drain(app) == 2
    assert len(spans("traced process")) == 2
    assert all(s.links[0].context.span_id == publish.get_span_context().span_id for s in spans("traced process"))


def test_bad_tracing_setting() -> None:
    with pytest.raises(ConfigError, match='tracing must be None, "link" or "child"'):
        Kiq(tracing="yes")
