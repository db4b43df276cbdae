"""Starting a swarm's children, and what the parent knows of each.

A child is forked from the parent, whose memory (the imported app) it shares
copy-on-write, or started as a fresh interpreter running the parent's own
command line (``sys.orig_argv``), which imports the app anew: the way a
phased restart picks up changed code. Forking is refused unless the parent
is single-threaded (:mod:`kiq.swarm.forksafe`); a fresh interpreter is
started with ``posix_spawn``, which is safe either way.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import secrets
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from kiq.swarm import child, forksafe
from kiq.swarm.channel import Channel, pair

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["Child", "Spawner"]


@dataclasses.dataclass(eq=False)
class Child:
    """One child, as the parent sees it."""

    index: int
    slot: int
    pid: int
    identity: str
    channel: Channel
    #: When it was started (monotonic).
    born: float
    #: A fresh interpreter rather than a fork of the parent.
    fresh: bool
    #: ``starting``, then ``fetching`` (or ``quiet``), then ``retiring`` once told to stop for good.
    state: str = "starting"
    #: Where it answers health checks (127.0.0.1:port), once it said.
    health: str | None = None
    #: Jobs of workers with ``hard_timeout`` it runs: jid → (deadline, limit).
    jobs: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    #: The jobs the parent killed it for: jid → limit.
    killed_for: dict[str, float] = dataclasses.field(default_factory=dict)
    #: Why the parent killed it, if it did.
    kill_reason: str = ""
    #: In a replacement: the child it replaces (retired once this one fetches).
    replacing: Child | None = None
    #: In a child being replaced: its replacement.
    replaced_by: Child | None = None
    #: Resident memory at the last sample, in bytes.
    rss: int = 0

    def __str__(self) -> str:
        return f"child #{self.index} (pid {self.pid})"

    @property
    def working(self) -> bool:
        """Started and not told to stop: it can take a command such as a recovery."""
        return self.state in ("fetching", "quiet") and not self.channel.closed


class Spawner:
    """Starts children for one swarm."""

    def __init__(self, app: Kiq, *, health: bool, after_fork: Callable[[], None]) -> None:
        self.app = app
        self.health = health
        #: Run in a forked child first: closes the parent's descriptors, resets its signal handlers.
        self.after_fork = after_fork
        self.argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])

    def start(self, index: int, slot: int, *, quiet: bool, fresh: bool, now: float) -> Child:
        """Starts child ``index`` (its spool in ``slot``); returns it as the parent knows it."""
        token = secrets.token_hex(6)
        spec = child.Spec(index=index, slot=slot, token=token, parent=os.getpid(), quiet=quiet, health=self.health)
        mine, theirs = pair()
        try:
            pid = self._spawn(spec, theirs) if fresh else self._fork(spec, mine, theirs)
        finally:
            theirs.close()
        return Child(index, slot, pid, child.identity(token, pid), Channel(mine, blocking=False), now, fresh)

    def _fork(self, spec: child.Spec, mine: socket.socket, theirs: socket.socket) -> int:
        forksafe.check(f"child #{spec.index}")
        # The imported app's objects move to a generation no collection visits, so a
        # child's garbage collector does not write to (and so copy) the pages it shares.
        gc.freeze()
        pid = os.fork()
        if pid != 0:
            return pid
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, child.LINGERING)
            self.after_fork()
            mine.close()
            code = child.serve(self.app, spec, theirs)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the child reports and exits; the parent restarts it
            traceback.print_exc()
            code = 1
        finally:
            child.finish(code)

    def _spawn(self, spec: child.Spec, theirs: socket.socket) -> int:
        fd = theirs.fileno()
        os.set_inheritable(fd, True)
        env = {**os.environ, **spec.environ(fd)}
        return os.posix_spawn(sys.executable, self.argv, env, setsigmask=child.LINGERING)
