"""The rule that makes forking safe: the parent is single-threaded when it forks.

A forked child inherits memory but only the thread that called ``fork``; a
lock another thread held at that moment (in malloc, in the core's runtime, in
a Redis client) stays locked forever in the child. So before each fork the
swarm's parent checks that nothing owns threads: no core runtime (each Redis
client starts it), no Python thread, no native thread; and refuses with an
error naming what it found.
"""

from __future__ import annotations

import os
import threading

from kiq import _kiq
from kiq.errors import ConfigError
from kiq.swarm.preload import noted

__all__ = ["check", "problems"]


def _native_threads(known: set[int]) -> list[str]:
    """Names of this process's OS threads other than the main one and ``known`` (Linux)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []
    names = []
    for tid in tids:
        if tid == os.getpid() or tid in known:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue  # it ended meanwhile
    return names


def problems() -> list[str]:
    """What makes this process unsafe to fork (empty when it is safe)."""
    found = []
    if _kiq.runtime_started():
        clients = noted()
        why = "; ".join(clients) if clients else "a Kiq client was created (an enqueue, app.client, a flush)"
        found.append(f"kiq's core runtime runs here: {why}")
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        found.append("Python threads " + ", ".join(repr(t.name) for t in others))
    known = {t.native_id for t in others if t.native_id is not None}
    native = _native_threads(known)
    if native and not _kiq.runtime_started():
        found.append("native threads " + ", ".join(repr(n) for n in sorted(native)))
    return found


def check(what: str) -> None:
    """Raises :class:`~kiq.errors.ConfigError` unless this process may fork ``what``."""
    found = problems()
    if found:
        raise ConfigError(
            f"cannot fork {what}: this process is not single-threaded ({'; '.join(found)}). A forked child keeps "
            "only the forking thread, so locks the others held would hang it. Build Redis clients and threads "
            "lazily (not at import), or start the swarm with --no-preload (app.run(processes=N, preload=False)): "
            "each child then imports the app itself"
        )
