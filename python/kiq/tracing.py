"""OpenTelemetry traces across Ruby and Python jobs on one Sidekiq queue.

With ``Kiq(tracing="link")`` (or ``"child"``) kiq does what OpenTelemetry's
Ruby Sidekiq instrumentation does, with the same keys, so a trace runs from a
Rails request through a Ruby job into a Python job and back:

- enqueueing opens a producer span ``"<queue> publish"`` and injects the
  current context into the job's top-level ``traceparent`` / ``tracestate`` /
  ``baggage`` fields (the configured propagators decide which);
- running a job opens a consumer span ``"<queue> process"``: a new trace
  *linked* to the enqueuer's span (``"link"``, the Ruby instrumentation's
  default) or its child (``"child"``). Baggage is restored either way, spans
  made inside ``perform`` (sync or async) are children of it, and a failure
  is recorded on it.

Needs the ``opentelemetry-api`` package (and an SDK to export anything); kiq
never imports it unless tracing is on.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from kiq import _kiq
from kiq.errors import ConfigError, JobCancelledError, Shutdown
from kiq.job import Job

__all__ = ["STYLES", "TRACE_FIELDS", "Tracing"]

STYLES = ("link", "child")
#: Where the trace context travels: top-level job fields, as Ruby's instrumentation puts it.
TRACE_FIELDS = _kiq.TRACE_CONTEXT_FIELDS


class Tracing:
    """Producer and consumer spans for one app."""

    def __init__(self, style: str) -> None:
        if style not in STYLES:
            raise ConfigError(f'tracing must be None, "link" or "child", not {style!r}')
        try:
            import opentelemetry.context as context
            import opentelemetry.propagate as propagate
            import opentelemetry.trace as trace
        except ImportError:
            raise ConfigError("tracing needs the opentelemetry-api package: pip install opentelemetry-api") from None
        self.style = style
        self._context, self._propagate, self._trace = context, propagate, trace
        self._tracer = trace.get_tracer("kiq", _kiq.__version__)

    @staticmethod
    def _attributes(class_name: str, jid: str | None, queue: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "messaging.system": "sidekiq",
            "messaging.sidekiq.job_class": class_name,
            "messaging.destination": queue,
            "messaging.destination_kind": "queue",
        }
        if jid is not None:
            attrs["messaging.message_id"] = jid
        return attrs

    @contextlib.contextmanager
    def publish(self, jobs: list[Job], batch: int | None = None) -> Iterator[list[Job]]:
        """One producer span around a push; yields the jobs carrying its
        context. ``batch`` counts the messages of a bulk push of one template;
        a single job also gets the jid the span names."""
        first = jobs[0]
        single = batch is None and len(jobs) == 1
        if single:
            jobs = [dataclasses.replace(first, jid=first.jid or _kiq.new_jid())]
        name = first.options.get("wrapped", first.class_name)
        attrs = self._attributes(str(name), jobs[0].jid if single else None, first.queue)
        if not single:
            attrs["messaging.batch.message_count"] = len(jobs) if batch is None else batch
        kind = self._trace.SpanKind.PRODUCER
        with self._tracer.start_as_current_span(f"{first.queue} publish", kind=kind, attributes=attrs):
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
            yield [dataclasses.replace(j, options={**j.options, **carrier}) for j in jobs]

    @contextlib.contextmanager
    def process(self, d: _kiq.Delivery) -> Iterator[None]:
        """The consumer span of one job run, current while it runs."""
        trace = self._trace
        extracted = self._propagate.extract(dict(d.trace_context))
        attrs = self._attributes(d.class_name, d.jid, d.queue)
        attrs["messaging.operation"] = "process"
        name, kind = f"{d.queue} process", trace.SpanKind.CONSUMER
        if self.style == "child":
            span = self._tracer.start_span(name, context=extracted, kind=kind, attributes=attrs)
        else:
            remote = trace.get_current_span(extracted).get_span_context()
            links = [trace.Link(remote)] if remote.is_valid else []
            root = self._context.Context()  # a trace of its own, linked to the enqueuer's
            span = self._tracer.start_span(name, context=root, kind=kind, attributes=attrs, links=links)
        token = self._context.attach(trace.set_span_in_context(span, extracted))  # baggage stays
        try:
            yield
        except (Shutdown, JobCancelledError):
            raise  # handed back to its queue, or ended on request: not failures
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"Unhandled exception of type: {type(exc).__name__}"))
            raise
        finally:
            self._context.detach(token)
            span.end()
