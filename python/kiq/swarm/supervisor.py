"""The swarm's parent: starts N children and keeps N running.

It is single-threaded and never touches Redis: one ``select`` loop in the
main thread waits on the children's links, the signal wakeup pipe and the
health listener, with a 0.2 s tick for timers (memory samples, restarts
after a backoff, hard time limits, the stop's deadline). What it does:

- **Supervision.** A child that dies is started again at once; one that
  crashes again within 30 s of its start waits 1, 2, 4 … up to 60 s first
  (each restart logged with the exit status or signal). A living child
  recovers the dead one's jobs at once (:meth:`kiq._kiq.Server.recover_dead`),
  or the next child to start if none lives.
- **Signals.** TERM/INT stop every child gracefully (the parent exits when
  they have; a second one hands running jobs back at once); TSTP quiets
  them; TTIN has each child log its threads; USR2 restarts them
  in phases: one at a time, a fresh interpreter first, the old child quieted
  and stopped once the new one fetches.
- **Limits.** Children's resident memory is sampled every 0.2 s: a child
  above ``--max-memory`` is replaced the same way (new first), and one that
  reaches twice the limit while it drains is killed. A child whose
  ``hard_timeout`` job runs late is killed at once; its recovery fails that
  job with ``JobTimeoutError`` and hands its other jobs back untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from kiq.errors import ConfigError, ShutdownError
from kiq.swarm import forksafe
from kiq.swarm.children import Child, Spawner
from kiq.swarm.health import SwarmHealth, swarm_metrics
from kiq.swarm.memory import rss_bytes
from kiq.swarm.recoveries import Recoveries

if TYPE_CHECKING:
    from types import FrameType

    from kiq.app import Kiq

__all__ = ["Supervisor"]

logger = logging.getLogger("kiq")

TICK = 0.2
#: Beyond the shutdown timeout, for results and hand-backs, before stragglers are killed.
STOP_GRACE = 15.0
#: A crash sooner than this after the start counts toward a crash loop.
FAST_CRASH = 30.0
MAX_BACKOFF = 60.0
# Not HUP: a terminal's hang-up ends the parent as it ends any program, and
# the children (which hold HUP back) then stop gracefully on their own.
_HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGUSR2, signal.SIGCHLD)


class Supervisor:
    """The parent of one swarm (see the module's documentation)."""

    def __init__(self, app: Kiq, processes: int, *, preload: bool = True) -> None:
        self.app = app
        self.processes = processes
        self.preload = preload
        #: Living children by pid.
        self.children: dict[int, Child] = {}
        self.state = "running"
        #: New children are fresh interpreters (no preload, or since a phased restart).
        self.fresh = not preload
        self.signals: list[int] = []
        #: Children to start again after a backoff: (when, index).
        self.restarts: list[tuple[float, int]] = []
        self.crashes: Counter[int] = Counter()
        self.recoveries = Recoveries()
        #: During a phased restart: children started before this moment are replaced.
        self.phase_before: float | None = None
        self.stop_deadline: float | None = None
        self.killed_at_deadline = False
        self.limit = app.max_memory_bytes
        self.restarted: Counter[str] = Counter()
        self.health: SwarmHealth | None = None
        self.previous: dict[int, signal.Handlers | int | None | object] = {}
        self.wakeup_r = self.wakeup_w = -1
        self.start_timeout = max(60.0, app.shutdown_timeout)

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Runs the swarm until TERM or INT, and until every child has stopped."""
        from kiq.running import tell  # noqa: PLC0415 - kiq.app imports this package

        if threading.current_thread() is not threading.main_thread():
            raise ShutdownError("a swarm handles signals and must run in the main thread")
        if self.app.test_mode is not None:
            raise ConfigError("a sandboxed Kiq does not fetch from Redis; run its jobs with kiq.testing.drain(app)")
        if self.preload:
            if self.app._client is not None and self.app.buffer_path is not None:
                raise ConfigError(
                    f"{self.app!r} opened its Redis client when it was built, to deliver its spool "
                    f"({self.app.buffer_path}): a process that forks must not have one. Build the app inside "
                    "`with kiq.swarm.preloading():` (kiq run -p does), or pass preload=False"
                )
            forksafe.check("the swarm's children")
        if self.app.buffer_path is not None and (Path(self.app.buffer_path) / "spool.log").exists():
            tell(f"swarm: {self.app.buffer_path} holds the spool of a run without --processes (a swarm's children "
                 f"spool in {Path(self.app.buffer_path) / '<slot>'}); deliver what it may hold with: kiq spool push "
                 f"{self.app.buffer_path}")
        spawner = Spawner(self.app, health=False, after_fork=self._in_child)
        self.spawner = spawner
        self._install()
        try:
            if self.app.health_address is not None:
                self.health = SwarmHealth(self.app.health_address, self.processes)
                spawner.health = True
            how = "forked from this preloaded process" if self.preload else "each importing the app itself"
            where = f"; health checks on {self.health.address}" if self.health is not None else ""
            tell(f"swarm pid {os.getpid()}: starting {self.processes} children ({how}){where}; TERM stops them, "
                 "TSTP quiets them, USR2 restarts them one at a time")
            now = time.monotonic()
            for index in range(self.processes):
                self._start(index, now)
            self._loop()
        finally:
            self._leftovers()
            self._uninstall()

    def _loop(self) -> None:
        while self.state != "stopping" or self.children:
            readers = [self.wakeup_r] + [c.channel.fileno() for c in self.children.values() if not c.channel.closed]
            writers = [c.channel.fileno() for c in self.children.values() if c.channel.pending]
            if self.health is not None:
                r, w = self.health.fds()
                readers += r
                writers += w
            try:
                readable, writable, _ = select.select(readers, writers, [], TICK)
            except InterruptedError:
                readable, writable = [], []
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wakeup_r, 512):
                    pass
            now = time.monotonic()
            self._signals(now)
            ready, ready_w = set(readable), set(writable)
            for c in list(self.children.values()):
                if c.channel.closed:
                    continue
                if c.channel.fileno() in ready:
                    self._read(c, now)
                if not c.channel.closed and c.channel.fileno() in ready_w and not c.channel.flush():
                    c.channel.close()
            self._reap(now)
            self._tick(now)
            if self.health is not None:
                kids = list(self.children.values())
                self.health.service(ready, ready_w, now, kids, self.state,
                                    lambda: swarm_metrics(self.processes, kids, self.restarted))

    # -- children ------------------------------------------------------------

    def _start(self, index: int, now: float, replacing: Child | None = None, reason: str = "") -> Child | None:
        """Starts child ``index``; ``reason`` (why the one before it ended) is counted for /metrics."""
        if reason:
            self.restarted[reason] += 1
        used = {c.slot for c in self.children.values()}
        slot = next(s for s in range(len(used) + 1) if s not in used)
        try:
            c = self.spawner.start(index, slot, quiet=self.state == "quiet", fresh=self.fresh, now=now)
        except OSError as exc:
            logger.error("swarm: cannot start child #%d (%s); trying again in 1s", index, exc)
            if replacing is None:
                self.restarts.append((now + 1.0, index))
            return None
        c.replacing = replacing
        if replacing is not None:
            replacing.replaced_by = c
        self.children[c.pid] = c
        logger.info("swarm: started %s as %s%s", c, c.identity, " (a fresh interpreter)" if c.fresh else "")
        return c

    def _read(self, c: Child, now: float) -> None:
        try:
            msgs = c.channel.receive()
        except ValueError as exc:
            logger.error("swarm: %s sent a bad message (%s); closing its link", c, exc)
            msgs = None
        if msgs is None:
            c.channel.close()  # it is exiting; the reaper hears of it next
            return
        for msg in msgs:
            kind = msg.get("m")
            if kind in ("fetching", "quiet"):
                self._running(c, str(kind), msg, now)
            elif kind == "job":
                c.jobs[str(msg["jid"])] = (now + float(msg["limit"]), float(msg["limit"]))
            elif kind == "done":
                c.jobs.pop(str(msg["jid"]), None)
            elif kind == "recovered":
                self.recoveries.done(str(msg["identity"]))
                logger.info("swarm: %s recovered the jobs of %s: %s back in their queues, %s poison pills, "
                            "%s failed for their hard_timeout", c, msg["identity"], msg.get("requeued"),
                            msg.get("poisoned"), msg.get("timed_out"))
            elif kind == "recover_failed":
                self.recoveries.failed(str(msg["identity"]), now)
                logger.warning("swarm: %s could not recover %s yet (%s); trying again", c, msg["identity"],
                               msg.get("error"))

    def _running(self, c: Child, kind: str, msg: dict[str, object], now: float) -> None:
        """A child started: it fetches (or is quiet, in a quiet swarm)."""
        health = msg.get("health")
        c.health = health if isinstance(health, str) else None
        if c.state == "retiring":
            return
        c.state = kind
        logger.info("swarm: %s is %s, after %.1fs", c, "fetching" if kind == "fetching" else "up (quiet)",
                    now - c.born)
        if self.state == "quiet" and kind == "fetching":
            c.channel.send("quiet")
        old, c.replacing = c.replacing, None
        if old is not None and old.pid in self.children:
            self._retire(old, f"its replacement {c} is {kind}")

    def _retire(self, c: Child, why: str) -> None:
        """Quiets and stops a child for good (it is not started again)."""
        c.state = "retiring"
        logger.info("swarm: quieting and stopping %s: %s", c, why)
        c.channel.send("quiet")
        c.channel.send("stop")

    def _kill(self, c: Child, reason: str, message: str) -> None:
        if c.kill_reason:
            return
        c.kill_reason = reason
        logger.error("swarm: %s; killing %s", message, c)
        with contextlib.suppress(ProcessLookupError):
            os.kill(c.pid, signal.SIGKILL)

    def _reap(self, now: float) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done == pid:
                self._exited(self.children.pop(pid), status, now)

    def _exited(self, c: Child, status: int, now: float) -> None:
        from kiq.running import tell  # noqa: PLC0415

        if not c.channel.closed:
            c.channel.close()
        code = os.waitstatus_to_exitcode(status)
        how = f"exited with status {code}" if code >= 0 else f"was killed by {signal.Signals(-code).name}"
        lived = now - c.born
        if code != 0 or c.kill_reason:
            # A clean exit handed its jobs back itself.
            self.recoveries.add(c.identity, dict(c.killed_for))
        replacement = c.replaced_by if c.replaced_by is not None and c.replaced_by.pid in self.children else None
        if replacement is not None and replacement.replacing is c:
            replacement.replacing = None  # still starting: it now simply takes the place
        if self.state == "stopping" or c.state == "retiring" or replacement is not None:
            logger.info("swarm: %s %s after %.1fs%s", c, how, lived,
                        "" if code == 0 else " (its jobs are recovered by a sibling)")
            return
        if c.replacing is not None:
            # A replacement that never fetched: the child it was to replace goes on.
            c.replacing.replaced_by = None
            tell(f"swarm: the new {c} {how} before it fetched; {c.replacing} keeps running")
            if self.phase_before is not None:
                tell("swarm: phased restart aborted (fix the new code, then send USR2 again)")
                self.phase_before = None
            return
        if c.kill_reason:
            tell(f"swarm: {c} {how} ({c.kill_reason}); starting a new one")
            self._start(c.index, now, reason=c.kill_reason)
        elif code == 0:
            tell(f"swarm: {c} stopped by itself (the Web UI's Stop, or --max-jobs); starting a new one")
            self._start(c.index, now, reason="stopped")
        else:
            self.crashes[c.index] = self.crashes[c.index] + 1 if lived < FAST_CRASH else 1
            crashes = self.crashes[c.index]
            delay = 0.0 if crashes == 1 else min(MAX_BACKOFF, 2.0 ** (crashes - 2))
            if delay == 0:
                tell(f"swarm: {c} {how} after {lived:.1f}s; starting a new one")
                self._start(c.index, now, reason="crash")
            else:
                tell(f"swarm: {c} {how} after {lived:.1f}s, crashing in a loop ({crashes} crashes within "
                     f"{FAST_CRASH:g}s of starting); starting a new one in {delay:g}s")
                self.restarts.append((now + delay, c.index))

    # -- timers --------------------------------------------------------------

    def _tick(self, now: float) -> None:
        for due, index in sorted(self.restarts):
            if due <= now:
                self.restarts.remove((due, index))
                if self.state != "stopping":
                    self._start(index, now, reason="crash")
        for c in list(self.children.values()):
            overdue = {jid: limit for jid, (deadline, limit) in c.jobs.items() if deadline <= now}
            if overdue and not c.kill_reason:
                c.killed_for = overdue
                jid, limit = next(iter(overdue.items()))
                self._kill(c, "hard_timeout", f"job {jid} ran past its hard_timeout of {limit:g}s")
            c.rss = rss_bytes(c.pid) or c.rss
            if self.limit is not None:
                self._memory(c, now)
            if c.state == "starting" and c.replacing is not None and now - c.born > self.start_timeout:
                self._kill(c, "start_timeout", f"the new {c} did not fetch within {self.start_timeout:g}s")
        self._phase(now)
        self._dispatch(now)
        if self.stop_deadline is not None and now >= self.stop_deadline and not self.killed_at_deadline:
            self.killed_at_deadline = True
            for c in self.children.values():
                self._kill(c, "stop_timeout", f"{c} did not stop within the shutdown timeout + {STOP_GRACE:g}s")

    def _memory(self, c: Child, now: float) -> None:
        limit = self.limit
        assert limit is not None
        mib = c.rss / (1 << 20)
        if c.rss > 2 * limit:
            self._kill(c, "memory", f"{c} uses {mib:.0f} MiB, twice --max-memory ({limit / (1 << 20):g} MiB)")
        elif c.rss > limit and c.state in ("fetching", "quiet") and c.replaced_by is None and self.state != "stopping":
            logger.warning("swarm: %s uses %.0f MiB, above --max-memory (%g MiB); starting its replacement, "
                           "then it drains and stops", c, mib, limit / (1 << 20))
            self._start(c.index, now, replacing=c, reason="memory")

    def _phase(self, now: float) -> None:
        """A phased restart's next step: one child at a time, the new one first."""
        from kiq.running import tell  # noqa: PLC0415

        if self.phase_before is None or self.state == "stopping":
            return
        kids = self.children.values()
        if any(c.replacing is not None for c in kids) or any(
            c.state == "retiring" and c.replaced_by is not None for c in kids
        ):
            return  # a replacement is under way
        old = [c for c in kids if c.born < self.phase_before and c.state in ("fetching", "quiet")]
        if not old:
            tell(f"swarm: phased restart done: {len(self.children)} children running")
            self.phase_before = None
            return
        nxt = min(old, key=lambda c: c.index)
        self._start(nxt.index, now, replacing=nxt, reason="phased")

    def _dispatch(self, now: float) -> None:
        """Gives each dead child's recovery to a living child."""
        if self.state == "stopping":
            return  # stopping children cannot; the leader recovers them (see _leftovers)
        helpers = [c for c in self.children.values() if c.working and c.state != "retiring"]
        self.recoveries.dispatch(helpers, set(self.children), now)

    # -- signals -------------------------------------------------------------

    def _install(self) -> None:
        self.wakeup_r, self.wakeup_w = os.pipe()
        os.set_blocking(self.wakeup_r, False)
        os.set_blocking(self.wakeup_w, False)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for sig in _HANDLED:
            self.previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)

    def _uninstall(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)
        if self.health is not None:
            self.health.close()

    def _in_child(self) -> None:
        """In a forked child: the parent's handlers, wakeup pipe and sockets are not its own."""
        signal.set_wakeup_fd(-1)
        for sig in _HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.wakeup_r)
        os.close(self.wakeup_w)
        if self.health is not None:
            self.health.close()
        for c in self.children.values():
            c.channel.sock.close()

    def _signals(self, now: float) -> None:
        from kiq.running import tell  # noqa: PLC0415

        while self.signals:
            sig = signal.Signals(self.signals.pop(0))
            kids = list(self.children.values())
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.state != "stopping":
                    self.state = "stopping"
                    self.stop_deadline = now + self.app.shutdown_timeout + STOP_GRACE
                    self.restarts.clear()
                    self.phase_before = None
                    tell(f"got {sig.name}: stopping {len(kids)} children gracefully; running jobs get up to "
                         f"{self.app.shutdown_timeout:g}s to finish ({sig.name} again hands them back at once)")
                    for c in kids:
                        c.channel.send("stop")
                else:
                    tell(f"got {sig.name} again: the children hand their running jobs back now")
                    for c in kids:
                        c.channel.send("hurry")
            elif sig == signal.SIGTSTP:
                if self.state == "running":
                    self.state = "quiet"
                    self.phase_before = None
                    logger.info("swarm: got SIGTSTP, quieting %d children", len(kids))
                    for c in kids:
                        c.channel.send("quiet")
            elif sig == signal.SIGTTIN:
                for c in sorted(kids, key=lambda c: c.index):
                    logger.warning("swarm: %s %s, %s, %.0f MiB, %d hard-limited jobs running", c, c.identity,
                                   c.state, c.rss / (1 << 20), len(c.jobs))
                    c.channel.send("dump")
            elif sig == signal.SIGUSR2:
                if self.state != "running":
                    logger.warning("swarm: got %s while %s; no phased restart", sig.name, self.state)
                    continue
                self.phase_before = now
                self.fresh = True
                tell(f"got {sig.name}: phased restart: replacing {len(kids)} children one at a time with fresh "
                     "interpreters (the new code); each old child stops once its replacement fetches")

    # -- the end ---------------------------------------------------------------

    def _leftovers(self) -> None:
        """Children still running when the loop ended (an error in the parent): stopped gracefully, else killed."""
        if not self.children:
            if left := self.recoveries.identities():
                logger.warning("swarm: the jobs of %s were not recovered by the swarm; the kiq leader recovers "
                               "them once their heartbeat expires", ", ".join(left))
            return
        logger.error("swarm: the parent is ending with %d children running; stopping them", len(self.children))
        for c in self.children.values():
            c.channel.send("stop")
        deadline = time.monotonic() + self.app.shutdown_timeout + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            time.sleep(0.05)
            for pid in list(self.children):
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == 0:
                        continue
                self.children.pop(pid).channel.close()
        for c in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(c.pid, 0)
