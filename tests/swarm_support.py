"""A swarm under test: ``kiq run ... -p N`` (or a script calling
``app.run(processes=N)``) as a subprocess, its JSON log lines, its children
(found in ``/proc``), and the promise that no process of it outlives the
test: every pid seen is checked, and killed by pid if it is still there."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest



def wait(predicate: Callable[[], Any], timeout: float, what: Callable[[], str], interval: float = 0.05) -> Any:
    """Polls ``predicate`` until it returns something truthy; fails with ``what()`` (read then) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what()}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def children_of(parent: int) -> set[int]:
    """The pids whose parent is ``parent``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(entry))
    return found


class Swarm:
    """One swarm started by a test."""

    def __init__(self, cwd: Path, argv: list[str], redis_url: str, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.log_path = cwd / f"swarm-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            env={**os.environ, "REDIS_URL": redis_url, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        #: Every child pid ever seen.
        self.seen: set[int] = set()

    @classmethod
    def kiq_run(cls, cwd: Path, target: str, redis_url: str, *args: str, env: dict[str, str] | None = None) -> Swarm:
        return cls(cwd, ["-m", "kiq", "run", target, "--json-logs", *args], redis_url, env)

    def children(self) -> set[int]:
        kids = children_of(self.pid)
        self.seen |= kids
        return kids

    def wait_children(self, n: int, timeout: float = 30) -> set[int]:
        kids: set[int] = wait(lambda: k if len(k := self.children()) == n else None, timeout,
                              lambda: f"{n} children of the swarm ({self.children()})\n{self.text()[-6000:]}")
        return kids

    def text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def messages(self, contains: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if contains in str(r.get("message", ""))]

    def wait_message(self, contains: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = wait(
            lambda: m if len(m := self.messages(contains)) >= count else None, timeout,
            lambda: f"{count} log lines with {contains!r}; the log:\n{self.text()[-6000:]}")
        return found

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM to the parent; its exit status, once it exited."""
        self.children()
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the swarm did not stop within {timeout}s\n{self.text()[-6000:]}")

    def assert_no_orphans(self, timeout: float = 10) -> None:
        wait(lambda: not [p for p in {self.pid, *self.seen} if alive(p)], timeout,
             lambda: f"every process of the swarm gone ({sorted(p for p in {self.pid, *self.seen} if alive(p))} left)")

    def close(self) -> None:
        """Kills (by pid) whatever of this swarm still runs (a test that failed half way);
        tests check with :meth:`assert_no_orphans` that a swarm left nothing behind."""
        self.children()
        left = [p for p in {self.pid, *self.seen} if alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
