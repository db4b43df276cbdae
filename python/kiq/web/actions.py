"""The actions (POST): each passes the read-only and CSRF gate, asks the
core to do exactly what Sidekiq's Web UI does to the keys, and redirects back
with a count of what it did."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kiq.web.app import Dashboard, Refused
from kiq.web.pages import QUEUE_NAME, SETS, JobSetPage

__all__ = ["routes"]

SIGNALS = {"quiet": "TSTP", "stop": "TERM"}


def _one(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0].strip() if values and values[0].strip() else None


def _action(spec: JobSetPage, fields: dict[str, list[str]]) -> str:
    action = _one(fields, "action")
    if action not in spec.actions:
        raise Refused(f"{spec.title} offers {', '.join(spec.actions)}, not {action!r}", 400)
    return action


def _set(request: Request, from_end: int) -> JobSetPage:
    return SETS[request.url.path.rstrip("/").split("/")[-from_end]]


def routes(dash: Dashboard) -> list[BaseRoute]:
    admin = dash.api.admin

    async def busy(request: Request) -> Response:
        fields = await dash.form(request)
        action = _one(fields, "action")
        if action not in SIGNALS:
            raise Refused("use quiet or stop", 400)
        identity = _one(fields, "identity")
        if identity:
            targets = [identity]
        else:
            targets = [p.identity for p in await dash.call(admin.processes) if not p.embedded]
        for target in targets:
            await dash.call(admin.signal, target, SIGNALS[action])
        return dash.back(request, "/busy", done=action, n=len(targets))

    async def queue_delete(request: Request) -> Response:
        fields = await dash.form(request)
        name = request.path_params["name"]
        jid = _one(fields, "jid")
        if not QUEUE_NAME.match(name) or not jid:
            raise Refused("which queue and job?", 400)
        done = await dash.call(admin.queue_delete, name, jid)
        return dash.back(request, f"/queues/{name}", done="delete", n=int(done), page=_one(fields, "page"),
                         order=_one(fields, "order"))

    async def queue_clear(request: Request) -> Response:
        await dash.form(request)
        name = request.path_params["name"]
        if not QUEUE_NAME.match(name):
            raise Refused("which queue?", 400)
        n = await dash.call(admin.queue_clear, name)
        return dash.back(request, "/queues", done="clear", n=n)

    def _back(request: Request, spec: JobSetPage, fields: dict[str, list[str]], action: str, n: int) -> Response:
        keep = {k: _one(fields, k) for k in ("class", "queue", "q", "order", "count")}
        return dash.back(request, f"/{spec.path}", done=action, n=n, **keep)

    async def selected(request: Request) -> Response:
        spec = _set(request, 1)
        fields = await dash.form(request)
        action = _action(spec, fields)
        keys = [k for k in fields.get("key", []) if k]
        n = await dash.call(admin.act, spec.set, action, keys) if keys else 0
        return _back(request, spec, fields, action, n)

    async def matching(request: Request) -> Response:
        spec = _set(request, 2)
        fields = await dash.form(request)
        action = _action(spec, fields)
        n = await dash.call(admin.act_all, spec.set, action, class_name=_one(fields, "class"),
                            queue=_one(fields, "queue"), text=_one(fields, "q"))
        return _back(request, spec, fields, action, n)

    async def one(request: Request) -> Response:
        spec = _set(request, 2)
        fields = await dash.form(request)
        action = _action(spec, fields)
        n = await dash.call(admin.act, spec.set, action, [request.path_params["key"]])
        return dash.back(request, f"/{spec.path}", done=action, n=n)

    return [
        Route("/busy", busy, methods=["POST"]),
        Route("/queues/{name}/delete", queue_delete, methods=["POST"]),
        Route("/queues/{name}/clear", queue_clear, methods=["POST"]),
        *(Route(f"/{path}", selected, methods=["POST"]) for path in SETS),
        *(Route(f"/{path}/all", matching, methods=["POST"]) for path in SETS),
        *(Route(f"/{path}/{{key}}", one, methods=["POST"]) for path in SETS),
    ]
