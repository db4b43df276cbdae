"""The swarm: one command runs many worker processes (Sidekiq Enterprise's
``sidekiqswarm``), ``kiq run TARGET --processes N`` or ``app.run(processes=N)``.

The parent imports the app once (preload), then forks N children; each is a
complete kiq process (:mod:`kiq.swarm.child`). The parent
(:mod:`kiq.swarm.supervisor`) never touches Redis and owns no thread: it
restarts children that die (with backoff when they crash in a loop), has a
living child recover a dead one's jobs at once, relays signals, replaces
children one at a time on USR2 (a phased restart), replaces a child whose
memory passes ``--max-memory``, kills a child whose job runs past its
worker's ``hard_timeout``, and answers health checks for the whole swarm.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from kiq.errors import ConfigError
from kiq.swarm.preload import preloading

if TYPE_CHECKING:
    from kiq.app import Kiq

__all__ = ["PROCESSES_ENV", "preloading", "processes", "run"]

#: The default of ``kiq run --processes``.
PROCESSES_ENV = "KIQ_PROCESSES"


def processes(value: int | str) -> int:
    """A number of children: a positive int, or ``"auto"`` (the cores this process may use)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f'processes must be a whole number >= 1 or "auto", not {value!r}') from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f'processes must be a whole number >= 1 or "auto", not {value!r}')
    return value


def run(app: Kiq, count: int | str, *, preload: bool = True) -> None:
    """Runs ``app`` as a swarm of ``count`` children until SIGTERM or SIGINT
    (in a fresh interpreter the swarm started as a child, runs that child
    and exits)."""
    from kiq.swarm import child  # noqa: PLC0415 - kiq.app imports this package; these import kiq.app

    spec = child.Spec.from_environ()
    if spec is not None:
        raise SystemExit(child.serve(app, *spec))
    from kiq.swarm.supervisor import Supervisor  # noqa: PLC0415

    Supervisor(app, processes(count), preload=preload).run()
