"""Sandbox mode (``Kiq(test_mode="sandbox")``): enqueued jobs stay in memory.

Nothing touches Redis. Each job is recorded with the payload a push would
have written and the *scope* it was enqueued in: the asyncio context's scope
if one was opened with :func:`kiq.testing.sandbox_scope`, else the thread's.
So tests running side by side (threads, tasks) see only their own jobs,
while ``scope="shared"`` sees every job. :mod:`kiq.testing` reads and runs them.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from kiq import _kiq
from kiq.activejob import is_wrapper

__all__ = ["DefaultMode", "Sandbox", "SandboxJob", "current_scope", "default_mode"]

_scope: contextvars.ContextVar[object | None] = contextvars.ContextVar("kiq_sandbox_scope", default=None)


def current_scope() -> object:
    """The scope jobs enqueued here belong to."""
    scope = _scope.get()
    return scope if scope is not None else ("thread", threading.get_ident())


@dataclasses.dataclass
class SandboxJob:
    """A job held by the sandbox."""

    class_name: str
    args: list[Any]
    queue: str
    jid: str
    #: The JSON payload a push would have written (the retry path updates it).
    payload: str
    #: When it should run (epoch seconds); None to run now.
    at: float | None
    enqueued: float
    scope: object
    #: ``"queued"``, ``"retry"`` or ``"dead"``.
    state: str = "queued"
    #: Keyword arguments (an ActiveJob job's); None otherwise.
    kwargs: dict[str, Any] | None = None
    #: Whether the last argument is encrypted in ``payload`` (``args`` holds it in clear).
    encrypted: bool = False

    @property
    def item(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.payload)
        return parsed

    @property
    def error_class(self) -> str | None:
        """The error class of its last failure (a job in ``state="retry"`` or ``"dead"``), else None."""
        value = self.item.get("error_class")
        return value if isinstance(value, str) else None

    @property
    def error_message(self) -> str | None:
        """The error message of its last failure, else None."""
        value = self.item.get("error_message")
        return value if isinstance(value, str) else None

    @property
    def retry_count(self) -> int | None:
        """``retry_count`` after its last failure (0 after the first), else None."""
        value = self.item.get("retry_count")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def delay(self) -> float | None:
        """Seconds from the enqueue to its run time, for scheduled jobs."""
        return None if self.at is None else self.at - self.enqueued


class Sandbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs: list[SandboxJob] = []

    def add(self, class_name: str, args: list[Any], queue: str, jid: str, payload: str, at: float | None,
            encrypted: bool = False) -> None:
        kwargs = None
        if is_wrapper(class_name):  # an ActiveJob job: recorded as its job class and plain arguments
            class_name, args, kwargs = _kiq.unwrap_active_job(json.dumps(args))
        job = SandboxJob(class_name, args, queue, jid, payload, at, time.time(), current_scope(), kwargs=kwargs,
                         encrypted=encrypted)
        with self._lock:
            self.jobs.append(job)

    def select(self, scope: str = "sandbox", state: str | None = "queued") -> list[SandboxJob]:
        mine = current_scope()
        with self._lock:
            return [j for j in self.jobs
                    if (scope == "shared" or j.scope == mine) and (state is None or j.state == state)]

    def remove(self, job: SandboxJob) -> None:
        with self._lock:
            if job in self.jobs:
                self.jobs.remove(job)

    def clear(self, scope: str = "sandbox") -> None:
        mine = current_scope()
        with self._lock:
            self.jobs = [j for j in self.jobs if not (scope == "shared" or j.scope == mine)]


class DefaultMode:
    """Whether a ``Kiq`` built without ``test_mode`` is sandboxed: the switch
    kiq's pytest plugin turns on while tests run (as Sidekiq's
    ``require "sidekiq/testing"`` makes fake mode the default). Off outside
    pytest; the plugin sets it per test (see :mod:`kiq.pytest_plugin`)."""

    def __init__(self) -> None:
        self.sandbox = False
        #: Why, for error messages: e.g. ``"kiq's pytest plugin"``.
        self.why = ""

    @contextlib.contextmanager
    def set(self, sandbox: bool, why: str) -> Iterator[None]:
        saved = self.sandbox, self.why
        self.sandbox, self.why = sandbox, why
        try:
            yield
        finally:
            self.sandbox, self.why = saved


default_mode = DefaultMode()
