"""Importing an app for a swarm: once, in the parent, before it forks.

A forked child inherits only the thread that forked, so the parent must own
no other thread when it forks: no core runtime (which every Redis client
starts), no Python thread. While :func:`preloading` is active, a
``Kiq(buffer_path=...)`` defers opening its client (and flushing the spool an
earlier run left) to ``start()``, which runs in each child; a client created
anyway (an enqueue at import, ``app.client``) is noted with the line that
made it, so the parent's refusal to fork can name it. A child started as a
fresh interpreter (``--no-preload``, a phased restart) defers the same way:
its parent's environment says so before the app is imported.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterator

__all__ = ["CHILD_ENV", "deferring", "note_client", "noted", "preloading"]

#: Set in a fresh interpreter the swarm starts as a child: who it is, and its link to the parent.
CHILD_ENV = "KIQ_SWARM_CHILD"


class _Mode:
    """Whether an import for a swarm is under way, and what started the core meanwhile."""

    def __init__(self) -> None:
        self.depth = 0
        self.clients: list[str] = []


_mode = _Mode()


@contextlib.contextmanager
def preloading() -> Iterator[None]:
    """Imports in this block are a swarm's preload: a ``Kiq(buffer_path=...)``
    built here opens its client (and its spool) only when it starts, in a
    child. ``kiq run --processes N`` imports the app this way; a script that
    calls ``app.run(processes=N)`` and uses ``buffer_path`` imports its app
    inside ``with kiq.swarm.preloading():``."""
    _mode.depth += 1
    try:
        yield
    finally:
        _mode.depth -= 1


def deferring() -> bool:
    """Whether a new ``Kiq`` should wait for ``start()`` before opening its client."""
    return _mode.depth > 0 or CHILD_ENV in os.environ


def note_client(app: object) -> None:
    """Notes (during a preload) where a Kiq client was created: the first frame outside kiq."""
    if _mode.depth == 0:
        return
    kiq_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = "an unknown place"
    for frame in reversed(traceback.extract_stack()):
        if not os.path.abspath(frame.filename).startswith(kiq_dir + os.sep):
            where = f"{frame.filename}:{frame.lineno} in {frame.name}"
            break
    _mode.clients.append(f"{app!r} created its Redis client at {where}")


def noted() -> list[str]:
    """What :func:`note_client` recorded."""
    return list(_mode.clients)
