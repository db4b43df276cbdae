"""The pages (GET): Dashboard, Busy, Queues, Retries, Scheduled, Dead, job
pages, Metrics, and the JSON the dashboard's charts poll."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from kiq.web.app import Dashboard, Refused

__all__ = ["ACTION_LABELS", "SETS", "JobSetPage", "routes"]

#: Sidekiq's Web UI only opens queues whose names match this.
QUEUE_NAME = re.compile(r"\A[a-z_:.\-0-9]+\Z", re.IGNORECASE)

ACTION_LABELS = {"retry": "Retry now", "add_to_queue": "Add to queue", "kill": "Kill", "delete": "Delete"}
DONE_LABELS = {"retry": "retried now", "add_to_queue": "added to their queues", "kill": "moved to the dead set",
               "delete": "deleted", "clear": "deleted with the queue", "quiet": "asked to quiet",
               "stop": "asked to stop"}


@dataclasses.dataclass(frozen=True)
class JobSetPage:
    path: str
    set: str
    title: str
    when: str
    actions: tuple[str, ...]
    newest_first: bool


SETS = {
    s.path: s
    for s in (
        JobSetPage("retries", "retry", "Retries", "Next retry", ("retry", "add_to_queue", "kill", "delete"), True),
        JobSetPage("scheduled", "schedule", "Scheduled", "When", ("add_to_queue", "kill", "delete"), True),
        JobSetPage("morgue", "dead", "Dead", "Died", ("retry", "add_to_queue", "delete"), True),
    )
}

METRIC_RANGES = {"1h": 60, "3h": 180, "8h": 480}


def _int(request: Request, name: str, default: int, low: int = 0, high: int = 1 << 40) -> int:
    try:
        return min(max(int(request.query_params.get(name, default)), low), high)
    except ValueError:
        return default


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value or None


def notice(request: Request) -> str | None:
    """The line an action's redirect asks for (built from fixed words only)."""
    done = DONE_LABELS.get(request.query_params.get("done", ""))
    return f"{_int(request, 'n', 0)} {done}" if done else None


def routes(dash: Dashboard) -> list[BaseRoute]:
    admin = dash.api.admin

    async def dashboard(request: Request) -> Response:
        days = _int(request, "days", 30, 7, 180)
        summary = await dash.call(admin.summary)
        info = await dash.call(admin.redis_info)
        return dash.render(request, "dashboard.html", page="dashboard", summary=summary, redis=info, days=days)

    async def stats_json(request: Request) -> Response:
        s = await dash.call(admin.summary)
        info = await dash.call(admin.redis_info)
        return JSONResponse({
            "sidekiq": {"processed": s.processed, "failed": s.failed, "busy": s.busy, "processes": s.processes,
                        "enqueued": s.enqueued, "scheduled": s.scheduled, "retries": s.retries, "dead": s.dead,
                        "default_latency": s.default_latency},
            "redis": dict(info),
            "server_utc_time": dt.datetime.now(dt.UTC).strftime("%H:%M:%S UTC"),
        })

    async def history_json(request: Request) -> Response:
        rows = await dash.call(admin.history, _int(request, "days", 30, 1, 180))
        return JSONResponse({"days": [{"date": d, "processed": p, "failed": f} for d, p, f in reversed(rows)]})

    async def busy(request: Request) -> Response:
        procs = await dash.call(admin.processes)
        return dash.render(request, "busy.html", page="busy", processes=procs, notice=notice(request),
                           threads=sum(p.concurrency for p in procs), busy=sum(p.busy for p in procs),
                           rss_kb=sum(p.rss_kb for p in procs))

    async def queues(request: Request) -> Response:
        summary = await dash.call(admin.summary)
        return dash.render(request, "queues.html", page="queues", summary=summary, notice=notice(request))

    async def queue(request: Request) -> Response:
        name = request.path_params["name"]
        if not QUEUE_NAME.match(name):
            raise Refused(f"no queue named {name!r} (names are letters, digits and _ : . -)", 404)
        count = _int(request, "count", dash.page_size, 1, 500)
        number = _int(request, "page", 1, 1)
        newest = request.query_params.get("order", "desc") != "asc"
        window = await dash.call(admin.window, "", (number - 1) * count, count, queue=name, newest_first=newest)
        return dash.render(request, "queue.html", page="queues", name=name, window=window, number=number,
                           count=count, newest=newest, notice=notice(request))

    async def job_set(request: Request) -> Response:
        spec = SETS[request.url.path.rstrip("/").rsplit("/", 1)[-1]]
        count = _int(request, "count", dash.page_size, 1, 500)
        number = _int(request, "page", 1, 1)
        order = request.query_params.get("order")
        newest = spec.newest_first if order not in ("asc", "desc") else order == "desc"
        filters = {"class_name": _text(request, "class"), "queue": _text(request, "queue"), "text": _text(request, "q")}
        searching = any(filters.values())
        start = _int(request, "start", 0)
        if searching:
            window = await dash.call(admin.search, spec.set, start, count, dash.scan_budget, newest_first=newest,
                                     **filters)
        else:
            window = await dash.call(admin.window, spec.set, (number - 1) * count, count, newest_first=newest)
        return dash.render(request, "jobs.html", page=spec.path, spec=spec, window=window, number=number,
                           count=count, newest=newest, filters=filters, searching=searching, start=start,
                           action_labels=ACTION_LABELS, notice=notice(request), budget=dash.scan_budget)

    async def job(request: Request) -> Response:
        spec = SETS[request.url.path.rstrip("/").rsplit("/", 2)[-2]]
        key = request.path_params["key"]
        found = await dash.call(admin.job, spec.set, key)
        return dash.render(request, "job.html", page=spec.path, spec=spec, job=found, key=key,
                           action_labels=ACTION_LABELS)

    async def metrics(request: Request) -> Response:
        period = request.query_params.get("period", "1h")
        minutes = METRIC_RANGES.get(period, 60)
        rows = await dash.call(admin.metrics, minutes)
        return dash.render(request, "metrics.html", page="metrics", rows=rows, period=period,
                           ranges=METRIC_RANGES, minutes=minutes)

    return [
        Route("/", dashboard, name="dashboard"),
        Route("/stats.json", stats_json),
        Route("/history.json", history_json),
        Route("/busy", busy, name="busy"),
        Route("/queues", queues, name="queues"),
        Route("/queues/{name}", queue, name="queue"),
        *(Route(f"/{path}", job_set, name=path) for path in SETS),
        *(Route(f"/{path}/{{key}}", job) for path in SETS),
        Route("/metrics", metrics, name="metrics"),
    ]
