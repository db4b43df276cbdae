"""One child of a swarm: a complete kiq process with its own identity,
heartbeat, Redis connections, leader candidacy and health listener.

A child is either forked from the parent that imported the app (preload: the
parent's memory is shared copy-on-write) or a fresh interpreter running the
same command line (``--no-preload``, and the new children of a phased
restart, which so pick up changed code); the parent's environment
(``KIQ_SWARM_CHILD``) tells a fresh one who it is. Either way it runs
``app.run()`` with:

- its identity ``hostname:pid:<token>`` (the parent knows it, to recover it),
  ``KIQ_INDEX`` set, and ``#<index>`` in its Busy page tag;
- its spool (``buffer_path``) in ``<buffer_path>/<slot>``: one process per
  spool, and a new child can start while the one it replaces still drains;
- health checks on ``127.0.0.1:0`` (the parent answers the swarm's address),
  and no memory limit of its own (the parent watches every child's);
- the link to the parent: it reports when it fetches, and when a job of a
  worker with ``hard_timeout`` starts and ends; it obeys the parent's
  commands. The link's end-of-file (and ``PR_SET_PDEATHSIG``) means the
  parent died: the child then stops gracefully.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

from kiq.errors import ConnectionError, KiqError  # noqa: A004 - kiq's own
from kiq.identity import hostname
from kiq.swarm.channel import Channel
from kiq.swarm.preload import CHILD_ENV

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["INDEX_ENV", "LINGERING", "Link", "Spec", "finish", "identity", "serve"]

logger = logging.getLogger("kiq")

#: The child's index (0 .. N-1), for per-child settings.
INDEX_ENV = "KIQ_INDEX"
#: Signals a child holds back from birth: TSTP and TTIN until it runs (a quiet
#: or a thread dump before then would stop or kill a half-started process),
#: USR2 for good (it restarts the swarm: the parent's business), and HUP (a
#: terminal's hang-up ends the parent, whose children then stop gracefully).
LINGERING = {signal.SIGUSR2, signal.SIGHUP, signal.SIGTSTP, signal.SIGTTIN}
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class Spec:
    """Who a child is."""

    index: int
    #: Names its spool directory; unique among living children.
    slot: int
    #: The random part of its identity.
    token: str
    #: The parent's pid: a child whose parent is already gone does not start.
    parent: int
    #: Start quiet (the swarm is quiet).
    quiet: bool
    #: Answer health checks on 127.0.0.1 for the parent.
    health: bool

    def environ(self, fd: int) -> dict[str, str]:
        """The environment a fresh interpreter gets to be this child (its link on ``fd``)."""
        return {CHILD_ENV: json.dumps({**dataclasses.asdict(self), "fd": fd}), INDEX_ENV: str(self.index)}

    @classmethod
    def from_environ(cls) -> tuple[Spec, socket.socket] | None:
        """This process's spec when the swarm started it as a fresh interpreter
        (taken out of the environment, so processes it starts are not children)."""
        raw = os.environ.pop(CHILD_ENV, None)
        if raw is None:
            return None
        fields: dict[str, Any] = json.loads(raw)
        sock = socket.socket(fileno=fields.pop("fd"))
        return cls(**fields), sock


class Link:
    """The child's end of the link, shared by its threads."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def started(self, jid: str, limit: float) -> None:
        self.channel.send("job", jid=jid, limit=limit)

    def ended(self, jid: str) -> None:
        self.channel.send("done", jid=jid)


def identity(token: str, pid: int | None = None) -> str:
    """A child's identity, which the parent computes too (from the pid it got)."""
    return f"{hostname()}:{os.getpid() if pid is None else pid}:{token}"


def _die_with_parent() -> None:
    """Asks Linux to send SIGTERM when the parent dies (a second line besides the link's end-of-file)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def serve(app: Kiq, spec: Spec, sock: socket.socket) -> int:
    """Runs ``app`` as child ``spec`` until it stops; returns the exit status."""
    os.environ[INDEX_ENV] = str(spec.index)
    _die_with_parent()
    if os.getppid() != spec.parent:
        logger.warning("swarm child #%d: the parent (pid %d) is gone before it started; exiting", spec.index,
                       spec.parent)
        return 0
    channel = Channel(sock, blocking=True)
    app.identity = identity(spec.token)
    app.tag = f"{app.tag} #{spec.index}".strip()
    if app.buffer_path is not None:
        app.buffer_path = os.path.join(os.fspath(app.buffer_path), str(spec.slot))
    app.health_address = "127.0.0.1:0" if spec.health else None
    app.max_memory_bytes = None  # the parent samples every child's memory
    app._swarm = Link(channel)
    app._start_quiet = spec.quiet
    started = threading.Event()

    def on_started() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTSTP, signal.SIGTTIN})
        channel.send("quiet" if spec.quiet else "fetching", health=app.health_address, identity=app.identity)
        started.set()

    app._on_started.append(on_started)
    reader = threading.Thread(target=_obey, args=(app, channel, started), name="kiq-swarm-link", daemon=True)
    reader.start()
    try:
        app.run()
    except KiqError as exc:
        from kiq.running import tell  # noqa: PLC0415 - kiq.app imports the swarm package

        what = "cannot reach Redis" if isinstance(exc, ConnectionError) else type(exc).__name__
        tell(f"swarm child #{spec.index} ({app.identity}) could not run: {what}: {exc}")
        return 3 if isinstance(exc, ConnectionError) else 1
    return 0


def _obey(app: Kiq, channel: Channel, started: threading.Event) -> None:
    """Acts on the parent's commands (once the app runs); the link's end means the parent died."""
    while True:
        msgs = channel.receive()
        started.wait()
        if msgs is None:
            if not app._stop_requested.is_set():
                logger.warning("swarm child %s: the swarm's parent is gone; stopping gracefully", app.identity)
                app.request_stop()
            return
        for msg in msgs:
            kind = msg.get("m")
            if kind == "recover":
                _recover(app, channel, msg)
            elif kind == "quiet":
                app.quiet()
            elif kind == "stop":
                app.request_stop()
            elif kind == "hurry":
                app._hurry.set()
                app.request_stop()
            elif kind == "dump":
                app.dump_threads()


def _recover(app: Kiq, channel: Channel, msg: dict[str, Any]) -> None:
    """Recovers a dead sibling's jobs (the parent names it, and the jobs it killed it for)."""
    dead = str(msg.get("identity"))
    server = app._server
    try:
        if server is None:
            raise KiqError("this child is stopping")
        requeued, poisoned, timed_out = server.recover_dead(dead, dict(msg.get("timed_out") or {}))
    except KiqError as exc:
        channel.send("recover_failed", identity=dead, error=str(exc))
        return
    channel.send("recovered", identity=dead, requeued=requeued, poisoned=poisoned, timed_out=timed_out)


def finish(code: int) -> NoReturn:
    """Ends a forked child: its exit handlers run (buffered jobs, logs) and
    it exits without returning into the parent's code that forked it."""
    try:
        atexit._run_exitfuncs()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
