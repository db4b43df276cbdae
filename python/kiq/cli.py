"""The ``kiq`` command (also ``python -m kiq``).

    kiq run myproject.jobs:app          run workers until SIGTERM / SIGINT (alias: kiq worker)
    kiq run myproject.jobs:app -p auto  a swarm: one supervised worker process per core
    kiq enqueue HardJob bob 5 -q critical [--app myproject.jobs:app]
    kiq stats | kiq queues
    kiq jobs retry|dead|scheduled|busy | kiq jobs queue NAME   [--class C] [--error TEXT] [--json]
    kiq batches | kiq batch BID         kiq's batches, one batch's status
    kiq retry JID | kiq kill JID | kiq delete JID | kiq cancel JID
    kiq retry --all dead [--class C] [--error TEXT] | kiq delete --all queue NAME [...]
    kiq gen worker SendEmail -q mail -r 5 | kiq gen reporter Audit | kiq gen app jobs
    kiq web --bind 127.0.0.1:7433       the web dashboard (pip install 'kiq[web]')
    kiq spool push PATH                 deliver jobs kept on disk (a spool directory or a dead-letter file)
    kiq acl --role worker               the Redis ACL SETUSER line kiq needs

Exit codes: 0 done, 1 the command found nothing to act on (an unknown jid),
2 bad usage, module or configuration, 3 Redis unreachable.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiq import _kiq, acl, gen, swarm
from kiq.api import Api, JobSet, Queue
from kiq.app import DEFAULT_URL, Kiq
from kiq.capsule import Capsule
from kiq.errors import ArgumentError, ConfigError, ConnectionError, KiqError
from kiq.errors import TimeoutError as KiqTimeoutError
from kiq.job import Job
from kiq.listing import render_table, row_of, row_of_work
from kiq.loader import load_app
from kiq.logs import configure
from kiq.worker import WorkerLike

__all__ = ["main"]

EXIT_NOT_FOUND, EXIT_USAGE, EXIT_REDIS = 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _redis_error(url: str, exc: KiqError) -> CliError:
    return CliError(f"cannot reach Redis at {url}: {exc}", EXIT_REDIS)


def _arg(text: str) -> Any:
    """A job argument from the command line: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry(text: str) -> bool | int:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--retry takes true, false or a number of retries, not {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: a queue runs at least 1 job at a time")
    return value


def _queue_limit(text: str) -> tuple[str, int | None, int | None]:
    """``QUEUE``, ``QUEUE:CONCURRENCY`` (threads of its own) or Sidekiq's
    ``QUEUE,WEIGHT`` (shared threads): (name, concurrency, weight)."""
    if "," in text:
        name, _, weight = text.partition(",")
        if not name or not weight.isdigit():
            raise argparse.ArgumentTypeError(f"-q {text!r}: QUEUE,WEIGHT takes a whole number >= 0 as the weight")
        return name, None, int(weight)
    name, colon, limit = text.partition(":")
    if not name or (colon and not limit):
        raise argparse.ArgumentTypeError(f"-q takes QUEUE, QUEUE:CONCURRENCY or QUEUE,WEIGHT, not {text!r}")
    try:
        return name, _positive(limit) if limit else None, None
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"-q {text!r}: the concurrency must be a whole number >= 1 ({exc})") from None


# -- commands ---------------------------------------------------------------


def cmd_run(ns: argparse.Namespace) -> int:
    configure(ns.log_level.upper(), json_format=ns.json_logs, name=None)
    processes = ns.processes if ns.processes is not None else os.environ.get(swarm.PROCESSES_ENV) or None
    if processes is not None:
        swarm.processes(processes)  # a bad count fails before the import
        with swarm.preloading():  # the app's spool (buffer_path) opens in each child, not here
            app = load_app(ns.target)
    else:
        app = load_app(ns.target)
    if ns.redis_url is not None or ns.namespace is not None:
        if app._client is not None:
            raise CliError(f"{ns.target} connected to Redis while it was imported; -r/--namespace cannot change "
                           "that (build the app's client later, or set $REDIS_URL)", EXIT_USAGE)
        app.redis_url = ns.redis_url or app.redis_url
        app.namespace = ns.namespace if ns.namespace is not None else app.namespace
    if ns.queue:
        default = ns.concurrency or 10
        own = {name: limit or default for name, limit, weight in ns.queue if weight is None}
        shared = {name: weight for name, _, weight in ns.queue if weight is not None}
        if shared:
            # Sidekiq's -q NAME,WEIGHT: those queues share -c threads (all weights 0: strict order).
            capsules = [Capsule(shared, default), *(Capsule([name], n) for name, n in own.items())]
            app.queues = app._check_queues(capsules)
        else:
            app.queues = app._check_queues(own)
    elif ns.concurrency and isinstance(app.queues, dict):
        app.queues = app._check_queues(dict.fromkeys(app.queues, ns.concurrency))
    elif ns.concurrency:
        app.queues = tuple(c.with_concurrency(ns.concurrency) for c in app.capsules)
    if ns.timeout is not None:
        if ns.timeout < 0:
            raise CliError("-t must not be negative", EXIT_USAGE)
        app.shutdown_timeout = ns.timeout
    if ns.tag is not None:
        app.tag = ns.tag
    if ns.health is not None:
        app.health_address = ns.health
    if ns.max_jobs is not None:
        if ns.max_jobs < 1:
            raise CliError("--max-jobs must be at least 1", EXIT_USAGE)
        app.max_jobs = ns.max_jobs
    if ns.max_memory is not None:
        if ns.max_memory <= 0:
            raise CliError("--max-memory must be a positive number of MiB", EXIT_USAGE)
        app.max_memory_bytes = int(ns.max_memory * (1 << 20))
    if not app.workers:
        logging.getLogger("kiq").warning("kiq: %s registers no workers; jobs will fail as unknown", ns.target)
    if processes is not None:
        # The parent never connects to Redis: each child does (and says so if it cannot).
        swarm.run(app, processes, preload=not ns.no_preload)
        return 0
    try:
        app.client.command("PING")
    except (ConnectionError, KiqTimeoutError) as exc:
        raise _redis_error(app.redis_url, exc) from exc
    app.run()
    return 0


def _api(ns: argparse.Namespace) -> Api:
    return Api(ns.redis_url, namespace=ns.namespace)


def _find_worker(app: Kiq, target: str, name: str) -> WorkerLike:
    """The worker ``name`` (its wire name, or its Python name) registered in ``app``."""
    workers = app.workers
    reg = workers.get(name) or next((r for r in workers.values() if getattr(r.source, "__name__", None) == name), None)
    if reg is None or reg.source is None:
        known = ", ".join(sorted(workers)) or "none"
        raise CliError(f"{target} registers no worker named {name!r} (it registers: {known})", EXIT_USAGE)
    return reg.source  # type: ignore[return-value]


def cmd_enqueue(ns: argparse.Namespace) -> int:
    if ns.args_json is not None and ns.args:
        raise CliError("give the arguments either one by one or as --args-json, not both", EXIT_USAGE)
    try:
        args = json.loads(ns.args_json) if ns.args_json is not None else [_arg(a) for a in ns.args]
    except ValueError as exc:
        raise CliError(f"--args-json is not JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(args, list):
        raise CliError("--args-json must be a JSON array", EXIT_USAGE)
    if ns.app is None:
        job = Job(ns.class_name, args, queue=ns.queue or "default", retry=True if ns.retry is None else ns.retry)
        url, namespace, timestamps = ns.redis_url, ns.namespace, "seconds"
    else:
        app = load_app(ns.app)
        worker = _find_worker(app, ns.app, ns.class_name)
        job = worker.new(*args)  # checked against perform's signature
        given = {k: v for k, v in (("queue", ns.queue), ("retry", ns.retry)) if v is not None}
        job = job.set(**given)
        used = {"queue": job.queue, "retry": job.retry, **job.options}
        used.update({k: v for k in ("unique_for", "expires_in") if (v := getattr(job, k)) is not None})
        said = ", ".join(f"{k}={v}{' (command line)' if k in given else ''}" for k, v in used.items())
        print(f"kiq: enqueueing {job.class_name} with the options of the worker {ns.app} registers: {said}",
              file=sys.stderr)
        url, namespace, timestamps = ns.redis_url or app.redis_url, ns.namespace or app.namespace, app.timestamps
    ns.redis_url = url or os.environ.get("REDIS_URL") or DEFAULT_URL  # what an error names
    app = Kiq(ns.redis_url, namespace=namespace, timestamps=timestamps, buffer=False)
    jid = app.enqueue(job, delay=ns.delay, at=ns.at, sync=True)
    print(jid)
    return 0


def cmd_spool_push(ns: argparse.Namespace) -> int:
    """Delivers jobs kept on disk: a spool directory (``buffer_path``, or what a
    process left in ``unsent-*`` at exit) or a dead-letter file (``*.jsonl``)."""
    path = Path(ns.path)
    if path.is_dir():
        app = Kiq(ns.redis_url, namespace=ns.namespace, buffer_path=path)
        _, waiting = app.client.spool_report  # the jobs the spool held (flushing starts at once)
        app.flush(ns.timeout)
        print(f"{waiting} jobs delivered from {path}")
        return 0
    if path.is_file():
        pushed, kept = Kiq(ns.redis_url, namespace=ns.namespace, buffer=False).client.replay_undeliverable(str(path))
        print(f"{pushed} jobs delivered from {path}" + (f"; {kept} still refused, kept in {path}" if kept else ""))
        return 0 if kept == 0 else 1
    raise CliError(f"{path} is neither a spool directory nor a dead-letter file", EXIT_USAGE)


def cmd_acl(ns: argparse.Namespace) -> int:
    """Prints the ``ACL SETUSER`` line for a kiq user (see :mod:`kiq.acl`)."""
    try:
        rules = acl.rules(ns.password, roles=ns.role or ("worker", "admin"), keys=ns.keys)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(" ".join(["ACL", "SETUSER", ns.user, *rules]))
    return 0


def cmd_stats(ns: argparse.Namespace) -> int:
    stats = _api(ns).stats()
    if ns.json:
        print(json.dumps(dataclasses.asdict(stats)))
        return 0
    rows = [
        ("processed", stats.processed), ("failed", stats.failed), ("enqueued", stats.enqueued),
        ("scheduled", stats.scheduled_size), ("retries", stats.retry_size), ("dead", stats.dead_size),
        ("processes", stats.processes_size), ("default latency", f"{stats.default_queue_latency:.3f}s"),
    ]
    for name, value in rows:
        print(f"{name:<16} {value}")
    return 0


def cmd_queues(ns: argparse.Namespace) -> int:
    queues = [(q.name, q.size(), q.latency()) for q in _api(ns).queues()]
    if ns.json:
        print(json.dumps([{"name": n, "size": s, "latency": lat} for n, s, lat in queues]))
        return 0
    if not queues:
        print("no queues")
        return 0
    width = max(len("queue"), *(len(n) for n, _, _ in queues))
    print(f"{'queue':<{width}}  {'size':>10}  latency")
    for name, size, latency in queues:
        print(f"{name:<{width}}  {size:>10}  {latency:.3f}s")
    return 0


#: The sets `kiq jobs` and the --all actions take, by their command-line names.
_SET_NAMES = {"retry": "retries", "dead": "dead", "scheduled": "scheduled"}


def _listed(api: Api, where: list[str], allowed: Sequence[str]) -> JobSet | Queue:
    """The set or queue named on the command line: ``retry``, ``dead``, ``scheduled`` or ``queue NAME``."""
    usage = " | ".join("queue NAME" if k == "queue" else k for k in allowed)
    if where[:1] == ["queue"] and "queue" in allowed:
        if len(where) != 2:
            raise CliError("name the queue: queue NAME", EXIT_USAGE)
        return api.queue(where[1])
    if len(where) != 1 or where[0] not in _SET_NAMES or where[0] not in allowed:
        raise CliError(f"expected {usage}, not {' '.join(where) or 'nothing'}", EXIT_USAGE)
    jobset: JobSet = getattr(api, _SET_NAMES[where[0]])
    return jobset


def _describe(listed: JobSet | Queue) -> str:
    return f"queue {listed.name}" if isinstance(listed, Queue) else f"the {listed.name} set"


def _scan_note(scanned: int, size: int, max_scan: int) -> str:
    if scanned >= max_scan and size > scanned:
        return f" (only the first {scanned:,} of {size:,} were examined; --scan N to read further)"
    return ""


def cmd_jobs(ns: argparse.Namespace) -> int:
    api = _api(ns)
    filters = {"class_name": ns.class_name, "error": ns.error}
    if ns.where == ["busy"]:
        needle = (ns.error or "").lower()
        rows = [r for r in map(row_of_work, api.work())
                if (not ns.class_name or r["class"] == ns.class_name)
                and needle in f"{r['error_class'] or ''}: {r['error_message'] or ''}".lower()]
        footer = f"{len(rows)} running"
        rows = rows[ns.start: ns.start + ns.limit]
    else:
        listed = _listed(api, ns.where, ("retry", "dead", "scheduled", "queue"))
        page = listed.select(**filters, limit=ns.limit, start=ns.start, max_scan=ns.scan)
        at = "enqueued_at" if isinstance(listed, Queue) else "at"
        rows = [row_of(j, getattr(j, at)) for j in page.jobs]
        more = f"; more: --start {page.next}" if page.next is not None else ""
        footer = (f"{len(rows)} shown of {page.size:,} in {_describe(listed)}{more}"
                  + _scan_note(page.scanned, page.size, ns.scan))
    if ns.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(render_table(rows) if rows else "no jobs")
        print(footer, file=sys.stderr)
    return 0


def _confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise CliError(f"{question} Add --yes to confirm (standard input is not a terminal)", EXIT_USAGE)
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def cmd_all(ns: argparse.Namespace) -> int:
    """``kiq retry --all ...`` / ``kiq delete --all ...``: count, confirm, act."""
    api = _api(ns)
    allowed = ("retry", "dead", "scheduled") if ns.command == "retry" else ("retry", "dead", "scheduled", "queue")
    listed = _listed(api, ns.target, allowed)
    filters = {"class_name": ns.class_name, "error": ns.error}
    matching, scanned, size = listed.count(**filters, max_scan=ns.scan)
    what = " ".join(f for f in (f"of class {ns.class_name}" if ns.class_name else "",
                                f"with {ns.error!r} in their error" if ns.error else "") if f)
    where = _describe(listed)
    if not matching:
        raise CliError(f"no jobs {what + ' ' if what else ''}in {where}{_scan_note(scanned, size, ns.scan)}",
                       EXIT_NOT_FOUND)
    verb = "Run" if ns.command == "retry" else "Delete"
    if not _confirm(f"{verb} {matching:,} jobs {what + ' ' if what else ''}in {where}"
                    f"{' now' if ns.command == 'retry' else ''}?{_scan_note(scanned, size, ns.scan)}", ns.yes):
        print("nothing done")
        return EXIT_NOT_FOUND
    if ns.command == "retry":
        assert isinstance(listed, JobSet)
        done, gone = listed.retry_all(**filters, max_scan=ns.scan)
    elif not ns.class_name and not ns.error:
        listed.clear()
        done, gone = matching, 0
    else:
        done, gone = listed.delete_all(**filters, max_scan=ns.scan)
    past = "enqueued now from" if ns.command == "retry" else "deleted from"
    print(f"{done:,} jobs {past} {where}" + (f"; {gone:,} were gone before their turn" if gone else ""))
    return 0


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _state(b: dict[str, Any]) -> str:
    if b.get("success"):
        return "succeeded"
    if b.get("death"):
        return "dead jobs"
    if b.get("complete"):
        return "complete"
    return "open" if b.get("open") else "running"


def cmd_batches(ns: argparse.Namespace) -> int:
    found = _api(ns).batches(0, ns.limit)
    if ns.json:
        print(json.dumps(found))
        return 0
    if not found:
        print("no batches")
        return 0
    print(f"{'bid':<14}  {'created (UTC)':<19}  {'total':>8}  {'pending':>8}  {'failures':>8}  {'state':<9}  description")
    for b in found:
        print(f"{b.bid:<14}  {_when(b.created_at):<19}  {b.total:>8}  {b.pending:>8}  {b.failures:>8}  "
              f"{_state(b):<9}  {b.description or ''}")
    return 0


def cmd_batch(ns: argparse.Namespace) -> int:
    b = _api(ns).batch(ns.bid)
    if b is None:
        raise CliError(f"no batch {ns.bid} (it expired or never existed)", EXIT_NOT_FOUND)
    if ns.json:
        print(json.dumps(b))
        return 0
    rows = [
        ("bid", b.bid), ("description", b.description or ""), ("created", _when(b.created_at)),
        ("state", _state(b)), ("total", b.total), ("pending", b.pending), ("failures", b.failures),
        ("parent", b.parent_bid or "-"), ("children", b.child_count),
        ("events fired", ", ".join(b["fired"]) or "-"), ("callbacks ran", ", ".join(b["callbacks_done"]) or "-"),
        ("invalidated", "yes" if b.invalidated else "no"), ("expires in", f"{b['expires_in']}s"),
        ("failed jids", " ".join(b.failed_jids) or "-"), ("dead jids", " ".join(b.dead_jids) or "-"),
    ]
    for name, value in rows:
        print(f"{name:<14} {value}")
    return 0


#: Where each action looks for the jid, in order.
_SETS = {"retry": ("retries", "dead", "scheduled"), "kill": ("retries", "scheduled"),
         "delete": ("scheduled", "retries", "dead")}
_DONE = {"retry": "enqueued now", "kill": "moved to the dead set", "delete": "deleted"}


def cmd_jid(ns: argparse.Namespace) -> int:
    if getattr(ns, "all", False):
        return cmd_all(ns)
    if len(ns.target) != 1:
        raise CliError(f"kiq {ns.command} takes one JID (or --all and a set)", EXIT_USAGE)
    ns.jid = ns.target[0]
    api = _api(ns)
    for attr in _SETS[ns.command]:
        jobset = getattr(api, attr)
        if getattr(jobset, ns.command)(ns.jid):
            print(f"{ns.jid}: {_DONE[ns.command]} (from {jobset.name})")
            return 0
    if ns.command == "delete":
        for queue in api.queues():
            if queue.delete(ns.jid):
                print(f"{ns.jid}: deleted (from queue {queue.name})")
                return 0
    where = ", ".join(getattr(api, a).name for a in _SETS[ns.command])
    raise CliError(f"no job {ns.jid} in {where}{' or any queue' if ns.command == 'delete' else ''}",
                   EXIT_NOT_FOUND)


def cmd_cancel(ns: argparse.Namespace) -> int:
    if _api(ns).cancel(ns.jid) == "deleted":
        print(f"{ns.jid}: deleted (it had not started)")
    else:
        print(f"{ns.jid}: cancellation requested. The process running it sees the request at its next heartbeat "
              "(5 s): an async job is then cancelled; a sync job stops only where it calls "
              "current_job().raise_if_cancelled(), and one that never does runs to its end and succeeds")
    return 0


def cmd_gen(ns: argparse.Namespace) -> int:
    if ns.kind == "worker":
        path = gen.write_worker(ns.name, ns.dir, queue=ns.queue, retry=ns.retry, dead=not ns.no_dead, force=ns.force)
    elif ns.kind == "reporter":
        path = gen.write_reporter(ns.name, ns.dir, force=ns.force)
    else:
        path = gen.write_app(ns.name, ns.dir, workers=ns.worker, force=ns.force)
    print(f"wrote {path}")
    return 0


def _bind(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bind takes HOST:PORT, not {text!r}") from None


def cmd_web(ns: argparse.Namespace) -> int:
    try:
        import uvicorn

        from kiq.web import BasicAuth, create_app
    except ImportError as exc:
        raise CliError(f"the dashboard needs its extra: pip install 'kiq[web]' ({exc})", EXIT_USAGE) from exc
    user, password = os.environ.get("KIQ_WEB_USER"), os.environ.get("KIQ_WEB_PASSWORD")
    if bool(user) != bool(password):
        raise CliError("set both KIQ_WEB_USER and KIQ_WEB_PASSWORD (HTTP Basic), or neither", EXIT_USAGE)
    host, port = ns.bind
    log = logging.getLogger("kiq")
    configure("INFO", name=None)
    if not user and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("kiq web: serving %s without a password; set KIQ_WEB_USER and KIQ_WEB_PASSWORD", host)
    api = _api(ns)
    try:
        api.client.command("PING")
    except KiqError as exc:
        raise _redis_error(ns.redis_url, exc) from exc
    app = create_app(api, read_only=ns.read_only, auth=BasicAuth(user, password) if user and password else None)
    log.info("kiq web: http://%s:%d/%s", host, port, " (read-only)" if ns.read_only else "")
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


# -- parser -----------------------------------------------------------------


def version_text() -> str:
    """kiq's version, how its core was built, and the Python it runs on (for bug reports)."""
    return (
        f"kiq {_kiq.__version__} ({os.path.dirname(os.path.abspath(_kiq.__file__))})\n"
        f"core: {_kiq.BUILD_INFO}; {os.path.basename(_kiq.__file__)}\n"
        f"python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    )


class _Version(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print kiq's version, its core's build and the Python")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(version_text())
        parser.exit()



def _redis_options(p: argparse.ArgumentParser, *, app_first: bool = False) -> None:
    if app_first:  # --app's own URL comes before $REDIS_URL
        p.add_argument("-r", "--redis-url", help="Redis URL (default: the --app's, else $REDIS_URL, else "
                       f"{DEFAULT_URL})")
    else:
        p.add_argument("-r", "--redis-url", default=os.environ.get("REDIS_URL") or DEFAULT_URL,
                       help="Redis URL (default $REDIS_URL, else %(default)s)")
    p.add_argument("--namespace", help="key prefix of a redis-namespace Sidekiq app")


def _filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="class_name", metavar="CLASS", help="only jobs of this class")
    p.add_argument("--error", metavar="TEXT", help="only jobs whose error contains TEXT (any case)")
    p.add_argument("--scan", type=_positive, default=100_000, metavar="N",
                   help="read at most N entries looking for matches (default %(default)s)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kiq", description="Sidekiq-compatible background jobs for Python.")
    top.add_argument("-V", "--version", action=_Version)
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", aliases=["worker"], help="run an app's workers until SIGTERM or SIGINT")
    p.add_argument("target", help="module:attribute of a Kiq (or of a function returning one), or a module")
    p.add_argument("-q", "--queue", action="append", type=_queue_limit, metavar="QUEUE[:N|,WEIGHT]",
                   help="queue to work and its concurrency (repeatable; replaces the app's queues); "
                        "QUEUE,WEIGHT (Sidekiq's) puts the queue in one pool of -c threads shared by weight "
                        "(all weights 0: strict order)")
    p.add_argument("-c", "--concurrency", type=_positive, help="concurrency of each queue without its own")
    p.add_argument("-t", "--timeout", type=float, help="shutdown timeout in seconds (default: the app's, 25)")
    p.add_argument("-g", "--tag", help="tag shown next to the process on the Busy page")
    p.add_argument("--health", metavar="HOST:PORT",
                   help="answer HTTP health checks (/live, /ready) here, e.g. 0.0.0.0:8080")
    p.add_argument("--max-jobs", type=int, metavar="N",
                   help="exit gracefully (status 0) after N jobs, for the supervisor to restart the process")
    p.add_argument("--max-memory", type=float, metavar="MIB",
                   help="exit gracefully (status 0) once resident memory passes MIB mebibytes (with -p: each child "
                        "above it is replaced)")
    p.add_argument("-p", "--processes", metavar="N|auto",
                   help="run a swarm of N worker processes (auto: one per usable core) under one supervising parent "
                        "(default: $KIQ_PROCESSES; without either, this process runs the workers itself)")
    p.add_argument("--no-preload", action="store_true",
                   help="with -p: each child imports the app itself instead of forking from the parent that did")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    p.add_argument("-r", "--redis-url", help="Redis URL (default: the app's, which defaults to $REDIS_URL)")
    p.add_argument("--namespace", help="key prefix of a redis-namespace Sidekiq app (default: the app's)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("enqueue", help="push one job (to a kiq or a Ruby worker)")
    p.add_argument("class_name", metavar="CLASS", help='the job class, e.g. HardJob or "Billing::Invoice"')
    p.add_argument("args", nargs="*", help="arguments, each JSON if it parses (5, true, {...}) else a string")
    p.add_argument("--args-json", help="all arguments as one JSON array instead")
    p.add_argument("--app", metavar="MODULE:ATTR",
                   help="the app registering CLASS: its worker's queue, retry and options apply (and its Redis)")
    p.add_argument("-q", "--queue", help="queue (default: the worker's with --app, else default)")
    p.add_argument("--retry", type=_retry, help="true, false or a number of retries (default: the worker's, else true)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--in", dest="delay", type=float, metavar="SECONDS", help="run it this many seconds from now")
    when.add_argument("--at", type=float, metavar="EPOCH", help="run it at this Unix time")
    _redis_options(p, app_first=True)
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("jobs", help="list the jobs of a set or queue, or the running ones")
    p.add_argument("where", nargs="+", metavar="retry|dead|scheduled|busy|queue NAME")
    _filter_options(p)
    p.add_argument("--limit", type=_positive, default=25, help="jobs to show (default %(default)s)")
    p.add_argument("--start", type=int, default=0, help="position to start from (the previous listing says)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _redis_options(p)
    p.set_defaults(func=cmd_jobs)

    for name, help_text in (("stats", "totals, as the Web UI's dashboard shows"), ("queues", "queues, sizes, latency")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        _redis_options(p)
        p.set_defaults(func=cmd_stats if name == "stats" else cmd_queues)

    p = sub.add_parser("batches", help="kiq's batches, newest first")
    p.add_argument("--limit", type=int, default=50, help="how many (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _redis_options(p)
    p.set_defaults(func=cmd_batches)

    p = sub.add_parser("batch", help="one batch's status: counts, events, failed and dead jids")
    p.add_argument("bid")
    p.add_argument("--json", action="store_true", help="print JSON")
    _redis_options(p)
    p.set_defaults(func=cmd_batch)

    for name, help_text in (
        ("retry", "run a retrying, dead or scheduled job now (--all: every one of a set)"),
        ("kill", "move a retrying or scheduled job to the dead set"),
        ("delete", "delete a scheduled, retrying, dead or queued job (--all: every one of a set or queue)"),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "kill":
            p.add_argument("target", nargs=1, metavar="JID")
        else:
            sets = "retry|dead|scheduled" + ("|queue NAME" if name == "delete" else "")
            p.add_argument("target", nargs="+", metavar=f"JID | --all {sets}")
            p.add_argument("--all", action="store_true", help=f"act on every job of {sets} (with the filters)")
            _filter_options(p)
            p.add_argument("-y", "--yes", action="store_true", help="do not ask before acting")
        _redis_options(p)
        p.set_defaults(func=cmd_jid)

    p = sub.add_parser("cancel", help="delete a waiting job, or ask the process running it to cancel it")
    p.add_argument("jid")
    _redis_options(p)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("acl", help="print the Redis ACL SETUSER line for a kiq user (producer, worker, admin)")
    p.add_argument("--user", default="kiq")
    p.add_argument("--password", default="CHANGE-ME")
    p.add_argument("--role", action="append", choices=["producer", "worker", "admin"],
                   help="repeatable (default: worker and admin)")
    p.add_argument("--keys", default="~*", help="key pattern (default ~*; ~ns:* with a namespace)")
    p.set_defaults(func=cmd_acl)

    sp = sub.add_parser("spool", help="deliver jobs kept on disk (a spool directory or a dead-letter file)")
    ssub = sp.add_subparsers(dest="spool_command", required=True)
    p = ssub.add_parser("push", help="push the jobs of PATH to Redis, exactly once")
    p.add_argument("path", help="a spool directory (buffer_path, unsent-*) or a dead-letter file (*.jsonl)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Redis (30)")
    _redis_options(p)
    p.set_defaults(func=cmd_spool_push)

    p = sub.add_parser("web", help="serve the web dashboard (needs the kiq[web] extra)")
    p.add_argument("--bind", type=_bind, default=("127.0.0.1", 7433), metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:7433); HTTP Basic auth from KIQ_WEB_USER and "
                        "KIQ_WEB_PASSWORD")
    p.add_argument("--read-only", action="store_true", help="show everything, offer and accept no action")
    _redis_options(p)
    p.set_defaults(func=cmd_web)

    g = sub.add_parser("gen", help="write a ready-to-run worker, reporter or app file")
    gsub = g.add_subparsers(dest="kind", required=True, metavar="KIND")
    p = gsub.add_parser("worker", help="a Worker class")
    p.add_argument("name", help="class name, e.g. SendEmail (the file is send_email.py)")
    p.add_argument("-q", "--queue", default="default")
    p.add_argument("-r", "--retry", type=_retry, default=25, help="retries (or true/false; default 25)")
    p.add_argument("--no-dead", action="store_true", help="drop the job after its last retry, not to the dead set")
    p = gsub.add_parser("reporter", help="a Reporter class")
    p.add_argument("name", help="class name, e.g. AuditReporter")
    p = gsub.add_parser("app", help="the app module `kiq run` takes")
    p.add_argument("name", help="module name, e.g. jobs (the file is jobs.py)")
    p.add_argument("-w", "--worker", action="append", metavar="MODULE",
                   help="worker module to include (repeatable; default: every worker module in the directory)")
    for p in (*gsub.choices.values(),):
        p.add_argument("-d", "--dir", default=".", help="where to write (default: the current directory)")
        p.add_argument("--force", action="store_true", help="overwrite an existing file")
    g.set_defaults(func=cmd_gen)
    return top


def _dash_bid(argv: list[str]) -> list[str]:
    """``kiq batch -5wRq47XXAAXEg``: a bid is URL-safe Base64 and may start
    with "-", which argparse would take for an unknown option; such a word is
    the bid (passed after ``--``)."""
    if not argv or argv[0] != "batch":
        return argv
    valued, flags = ("-r", "--redis-url", "--namespace"), ("-h", "--help", "--json")
    rest: list[str] = []
    bids: list[str] = []
    i = 1
    while i < len(argv):
        word = argv[i]
        if word == "--":
            bids += argv[i + 1:]
            break
        if word in valued:
            rest += argv[i:i + 2]
            i += 2
            continue
        if word.startswith("-") and word.split("=", 1)[0] not in valued + flags:
            bids.append(word)
        else:
            rest.append(word)
        i += 1
    return ["batch", *rest, "--", *bids] if bids else argv


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``kiq`` command; returns its exit code."""
    ns = parser().parse_args(_dash_bid(list(sys.argv[1:] if argv is None else argv)))
    try:
        code: int = ns.func(ns)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`kiq jobs dead | head`): stop quietly, and keep
        # the interpreter from complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CliError as exc:
        print(f"kiq: {exc}", file=sys.stderr)
        return exc.code
    except ConnectionError as exc:
        url = getattr(ns, "redis_url", None) or "Redis"
        print(f"kiq: cannot reach Redis at {url}: {exc}", file=sys.stderr)
        return EXIT_REDIS
    except (ConfigError, ArgumentError, gen.GenError) as exc:
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, KiqError):
            # An import or a call of the user's code failed: where, exactly, matters.
            traceback.print_exception(cause, file=sys.stderr)
        print(f"kiq: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KiqTimeoutError as exc:
        print(f"kiq: Redis did not answer in time: {exc}", file=sys.stderr)
        return EXIT_REDIS
    except KiqError as exc:
        print(f"kiq: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
