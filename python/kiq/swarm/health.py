"""Health checks for a whole swarm, answered by its parent.

With ``--health HOST:PORT`` the parent listens there, and each child answers
its own checks on ``127.0.0.1`` (a port it reports over its link). The
parent polls every child's ``/ready`` each second and answers:

- ``/live``: 200 while the parent runs (503 once it stops);
- ``/ready``: 200 while at least N children are ready (fetching, with a
  fresh heartbeat), else 503 naming the ones that are not;
- ``/metrics``: each child's counters fetched at once and summed, under the
  names a single process uses (``kiq_job_running_seconds`` and
  ``kiq_heartbeat_age_seconds`` take the largest instead), then the same
  per child as ``kiq_child_<name>{child="<index>"}``, then the swarm's own
  (children, restarts, each child's resident memory).
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from kiq.errors import ConfigError
from kiq.swarm.http import Get, Incoming, respond

if TYPE_CHECKING:
    from kiq.swarm.children import Child

__all__ = ["SwarmHealth", "aggregate", "swarm_metrics"]

#: A child's last /ready answer counts for this long.
FRESH = 3.0
POLL = 1.0
#: How long /metrics waits for the children.
FANOUT = 2.0
_LARGEST = {"kiq_job_running_seconds", "kiq_heartbeat_age_seconds"}


def _bind(address: str) -> socket.socket:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f'health_address must be "HOST:PORT", e.g. "0.0.0.0:8080", not {address!r}')
    try:
        info = socket.getaddrinfo(host or "0.0.0.0", int(port), type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(64)
    except OSError as exc:
        raise ConfigError(f"cannot answer health checks on {address}: {exc}") from None
    sock.setblocking(False)
    return sock


def aggregate(texts: dict[int, str]) -> str:
    """Children's Prometheus texts (by index): summed families, then per child."""
    helps: dict[str, tuple[str, str]] = {}
    totals: dict[str, dict[str, float]] = {}
    per_child: dict[str, list[str]] = {}
    for index, text in sorted(texts.items()):
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                helps[name] = (help_text, helps.get(name, ("", "gauge"))[1])
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                helps[name] = (helps.get(name, ("", ""))[0], kind)
            elif line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                name, brace, labels = series.partition("{")
                labels = labels.rstrip("}") if brace else ""
                try:
                    number = float(value)
                except ValueError:
                    continue
                family = totals.setdefault(name, {})
                old = family.get(labels)
                if old is None:
                    family[labels] = number
                else:
                    family[labels] = max(old, number) if name in _LARGEST else old + number
                child_labels = f'child="{index}"' + (f",{labels}" if labels else "")
                per_child.setdefault(name, []).append(f"kiq_child_{name.removeprefix('kiq_')}{{{child_labels}}} {value}")
    out = []
    for name, family in totals.items():
        help_text, kind = helps.get(name, ("", "gauge"))
        out.append(f"# HELP {name} {help_text} (summed over the swarm's children)")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{{{labels}}} {_number(v)}" if labels else f"{name} {_number(v)}" for labels, v in family.items())
    for name, lines in per_child.items():
        child_name = f"kiq_child_{name.removeprefix('kiq_')}"
        help_text, kind = helps.get(name, ("", "gauge"))
        out.append(f"# HELP {child_name} {help_text} (per child)")
        out.append(f"# TYPE {child_name} {kind}")
        out.extend(lines)
    return "\n".join(out) + "\n" if out else ""


def swarm_metrics(processes: int, children: list[Child], restarts: Mapping[str, int]) -> str:
    """The parent's own families: children by state, restarts by reason, each child's memory."""
    states = Counter(c.state for c in children)
    lines = [
        "# HELP kiq_swarm_processes Children the swarm runs (--processes).",
        "# TYPE kiq_swarm_processes gauge",
        f"kiq_swarm_processes {processes}",
        "# HELP kiq_swarm_children Children alive, by state.",
        "# TYPE kiq_swarm_children gauge",
        *(f'kiq_swarm_children{{state="{s}"}} {states.get(s, 0)}' for s in ("starting", "fetching", "quiet", "retiring")),
        "# HELP kiq_swarm_restarts_total Children started again, by why the one before ended.",
        "# TYPE kiq_swarm_restarts_total counter",
        *(f'kiq_swarm_restarts_total{{reason="{r}"}} {n}' for r, n in sorted(restarts.items())),
        "# HELP kiq_swarm_child_resident_bytes Each child's resident memory at the last sample.",
        "# TYPE kiq_swarm_child_resident_bytes gauge",
        *(f'kiq_swarm_child_resident_bytes{{child="{c.index}",pid="{c.pid}"}} {c.rss}'
          for c in sorted(children, key=lambda c: c.index)),
    ]
    return "\n".join(lines) + "\n"


def _number(v: float) -> str:
    return str(int(v)) if v.is_integer() else f"{v:.3f}"


class SwarmHealth:
    """The parent's health listener, driven by the supervisor's select loop."""

    def __init__(self, address: str, processes: int) -> None:
        self.listener = _bind(address)
        host, port = self.listener.getsockname()[:2]
        self.address = f"{host}:{port}"
        self.processes = processes
        self.incoming: list[Incoming] = []
        #: Readiness polls and /metrics fetches under way: (get, child pid, "ready" or "metrics:<index>").
        self.gets: list[tuple[Get, int, str]] = []
        #: Each child's last /ready answer: pid → (ready, reason, when).
        self.ready: dict[int, tuple[bool, str, float]] = {}
        #: /metrics requests waiting for the children: (request, deadline, texts by index, awaited indexes).
        self.metrics: list[tuple[Incoming, float, dict[int, str], set[int]]] = []
        self.next_poll = 0.0

    def fds(self) -> tuple[list[int], list[int]]:
        """Descriptors to wait on: (readable, writable)."""
        read = [self.listener.fileno(), *(r.fileno() for r in self.incoming if r.request is None)]
        write = [r.fileno() for r in self.incoming if r.out]
        for get, _, _ in self.gets:
            read.append(get.fileno())
            if get.sending:
                write.append(get.fileno())
        return read, write

    def service(self, readable: set[int], writable: set[int], now: float, children: Iterable[Child],
                state: str, extra: Callable[[], str]) -> None:
        """One turn of the select loop; ``extra()`` gives the parent's own metrics."""
        kids = list(children)
        if self.listener.fileno() in readable:
            while True:
                try:
                    sock, _ = self.listener.accept()
                except OSError:  # nothing more to accept now (or a connection reset before it was)
                    break
                self.incoming.append(Incoming(sock, now + 2.0))
        for get, _, _ in self.gets:
            if get.fileno() in writable:
                get.writable()
            if get.fileno() in readable:
                get.readable()
        for req in self.incoming:
            fd = req.fileno()
            if req.request is None and fd in readable:
                req.readable()
                if req.request is not None:
                    self._answer(req, now, kids, state)
            elif req.out and fd in writable:
                req.writable()
        self.tick(now, kids, extra)

    def tick(self, now: float, children: list[Child], extra: Callable[[], str]) -> None:
        """Polls children's readiness, finishes fetches and /metrics answers, drops what timed out."""
        for get, _, _ in self.gets:
            if not get.done and now >= get.deadline:
                get.finish()
        for get, pid, purpose in [g for g in self.gets if g[0].done]:
            if purpose == "ready":
                reason = _reason(get)
                self.ready[pid] = (get.status == 200, reason, now)
            else:
                for req, _, texts, awaited in self.metrics:
                    if pid in awaited:
                        awaited.discard(pid)
                        if get.status == 200:
                            texts[int(purpose.split(":")[1])] = get.body
        self.gets = [g for g in self.gets if not g[0].done]
        for entry in list(self.metrics):
            req, deadline, texts, awaited = entry
            if not awaited or now >= deadline:
                self.metrics.remove(entry)
                head = req.request is not None and req.request[0] == "HEAD"
                req.answer(respond(200, aggregate(texts) + extra(), text=True, head=head))
        if now >= self.next_poll:
            self.next_poll = now + POLL
            for child in children:
                if child.health is not None and child.working:
                    self.gets.append((Get(child.health, "/ready", now + POLL), child.pid, "ready"))
        for req in self.incoming:
            if not req.done and now >= req.deadline + FANOUT:
                req.close()
        self.incoming = [r for r in self.incoming if not r.done]
        living = {c.pid for c in children}
        self.ready = {pid: v for pid, v in self.ready.items() if pid in living}

    def _answer(self, req: Incoming, now: float, children: list[Child], state: str) -> None:
        method, target = req.request or ("", "")
        path = target.split("?", 1)[0]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            req.answer(respond(405, '{"status":"error","reason":"only GET and HEAD"}', head=head))
        elif path in ("/live", "/livez"):
            ok = state != "stopping"
            body = {"status": "ok" if ok else "unavailable", "role": "swarm", "state": state,
                    "processes": self.processes, "children": len(children)}
            if not ok:
                body["reason"] = "stopping"
            req.answer(respond(200 if ok else 503, json.dumps(body), head=head))
        elif path in ("/ready", "/readyz"):
            req.answer(self._readiness(now, children, state, head))
        elif path == "/metrics":
            awaited = {c.pid for c in children if c.health is not None}
            self.metrics.append((req, now + FANOUT, {}, awaited))
            for c in children:
                if c.health is not None:
                    self.gets.append((Get(c.health, "/metrics", now + FANOUT), c.pid, f"metrics:{c.index}"))
        else:
            req.answer(respond(404, '{"status":"error","reason":"try /live, /ready or /metrics"}', head=head))

    def _readiness(self, now: float, children: list[Child], state: str, head: bool) -> bytes:
        ready, not_ready = [], []
        for c in sorted(children, key=lambda c: c.index):
            ok, reason, when = self.ready.get(c.pid, (False, "not polled yet", now))
            if ok and now - when <= FRESH and c.state == "fetching":
                ready.append(c)
            elif c.state != "retiring":
                not_ready.append(f"#{c.index} (pid {c.pid}): {reason if c.state != 'starting' else 'starting'}")
        body: dict[str, object] = {"role": "swarm", "state": state, "processes": self.processes,
                                   "fetching": len(ready)}
        if state == "running" and len(ready) >= self.processes:
            return respond(200, json.dumps({"status": "ok", **body}), head=head)
        why = f"{len(ready)} of {self.processes} children are fetching"
        if state != "running":
            why = f"the swarm is {state}; {why}"
        if not_ready:
            why += ": " + "; ".join(not_ready)
        return respond(503, json.dumps({"status": "unavailable", "reason": why, **body}), head=head)

    def close(self) -> None:
        self.listener.close()
        for req in self.incoming:
            req.close()
        for get, _, _ in self.gets:
            get.finish()


def _reason(get: Get) -> str:
    if get.status == 0:
        return "its health port did not answer"
    try:
        parsed = json.loads(get.body)
    except ValueError:
        return f"HTTP {get.status}"
    return str(parsed.get("reason") or parsed.get("status") or get.status)
