"""``kiq gen``: ready-to-run worker, reporter and app files (Kiq's three generators).

The files are plain Python that ``mypy --strict`` accepts; edit them freely.
A generated worker keeps its class name as its wire name, so Ruby code (and
``kiq enqueue``) reach it by that name.
"""

from __future__ import annotations

import json
import keyword
import re
from pathlib import Path

__all__ = ["GenError", "write_app", "write_reporter", "write_worker"]

#: Mark the files `kiq gen worker` / `kiq gen reporter` wrote, so `kiq gen app` finds them.
WORKER_MARK = "# kiq worker (written by `kiq gen worker`; `kiq gen app` looks for this line)"
REPORTER_MARK = "# kiq reporter (written by `kiq gen reporter`; `kiq gen app` looks for this line)"


class GenError(Exception):
    """A generator could not write its file."""


def snake(name: str) -> str:
    """``SendEmail`` → ``send_email``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def camel(name: str) -> str:
    """``send_email`` → ``SendEmail`` (a CamelCase name is kept)."""
    return name if "_" not in name and name[:1].isupper() else "".join(p[:1].upper() + p[1:] for p in name.split("_"))


def _identifier(name: str, what: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise GenError(f"{what} name {name!r} is not a Python identifier (e.g. SendEmail)")
    return name


def _write(directory: str, filename: str, text: str, force: bool) -> Path:
    path = Path(directory) / filename
    if path.exists() and not force:
        raise GenError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def worker_source(cls: str, queue: str = "default", retry: bool | int = 25, dead: bool = True) -> str:
    options = f"queue={json.dumps(queue)}, retry={retry!r}, name={json.dumps(cls)}" + ("" if dead else ", dead=False")
    return f'''"""{cls}: a kiq worker."""

{WORKER_MARK}

from __future__ import annotations

import logging

from kiq import Worker

logger = logging.getLogger(__name__)


class {cls}(Worker, {options}):
    """Enqueue with ``app.enqueue({cls}.new(...))``; from Ruby, push class "{cls}"."""

    def perform(self, *args: object) -> None:
        # Arguments arrive as JSON gave them: str, int, float, bool, None, list, dict.
        logger.info("{cls} %s ran with %r", self.jid, args)
'''


def write_worker(name: str, directory: str = ".", *, queue: str = "default", retry: bool | int = 25,
                 dead: bool = True, force: bool = False) -> Path:
    """Writes ``<snake name>.py`` with a :class:`~kiq.Worker` subclass."""
    cls = _identifier(camel(name), "worker")
    if not queue:
        raise GenError("the queue name must not be empty")
    return _write(directory, f"{snake(cls)}.py", worker_source(cls, queue, retry, dead), force)


def reporter_source(cls: str) -> str:
    return f'''"""{cls}: a kiq reporter, told about every job (on its own thread)."""

{REPORTER_MARK}

from __future__ import annotations

import logging
from types import TracebackType

from kiq import JobInfo, Reporter

logger = logging.getLogger(__name__)


class {cls}(Reporter):
    """Pass an instance to ``Kiq(extra_reporters=[{cls}()])``."""

    def handle_started(self, job: JobInfo) -> None:
        logger.debug("started %s %s", job.class_name, job.jid)

    def handle_success(self, job: JobInfo, elapsed: float) -> None:
        logger.info("%s %s succeeded in %.3fs", job.class_name, job.jid, elapsed)

    def handle_failure(self, job: JobInfo, error: BaseException, traceback: TracebackType | None) -> None:
        logger.warning("%s %s failed: %r", job.class_name, job.jid, error)

    def handle_aborted(self, job: JobInfo, reason: str) -> None:
        logger.warning("%s %s aborted: %s", job.class_name, job.jid, reason)

    def handle_rescheduled(self, job: JobInfo, reason: str, at: float) -> None:
        logger.info("%s %s rescheduled (%s) to %.0f", job.class_name, job.jid, reason, at)

    def handle_stopped(self, job: JobInfo) -> None:
        pass
'''


def write_reporter(name: str, directory: str = ".", *, force: bool = False) -> Path:
    """Writes ``<snake name>.py`` with a :class:`~kiq.Reporter` subclass."""
    cls = _identifier(camel(name), "reporter")
    return _write(directory, f"{snake(cls)}.py", reporter_source(cls), force)


_CLASS = re.compile(r"^class (\w+)\(Worker\b.*?queue=(['\"])(.+?)\2", re.M)


def _workers_in(path: Path) -> list[tuple[str, str]]:
    """(class, queue) of the workers a generated worker file defines."""
    return [(m.group(1), m.group(3)) for m in _CLASS.finditer(path.read_text())]


_REPORTER = re.compile(r"^class (\w+)\(Reporter\b", re.M)


def app_source(name: str, workers: dict[str, list[tuple[str, str]]], reporters: dict[str, list[str]]) -> str:
    names = {module: [c for c, _ in found] for module, found in workers.items()} | reporters
    imports = "".join(f"from {module} import {', '.join(found)}\n" for module, found in sorted(names.items()))
    classes = [c for found in workers.values() for c, _ in found]
    queues = sorted({q for found in workers.values() for _, q in found}) or ["default"]
    queue_map = ", ".join(f"{json.dumps(q)}: 10" for q in queues)
    extra = [f"{c}()" for found in reporters.values() for c in found]
    reporter_line = f"\n    extra_reporters=[{', '.join(extra)}]," if extra else ""
    return f'''"""{name}: the kiq app. Run its workers with ``kiq run {name}:app``.

Redis comes from $REDIS_URL (default redis://localhost:6379/0).
"""

from __future__ import annotations

from kiq import Kiq

{imports}
app = Kiq(
    queues={{{queue_map}}},  # queue -> how many of its jobs run at once
    workers=[{", ".join(classes)}],{reporter_line}
)
'''


def write_app(name: str, directory: str = ".", *, workers: list[str] | None = None, force: bool = False) -> Path:
    """Writes ``<name>.py`` defining ``app``, registering the given worker
    modules (default: every file ``kiq gen worker`` wrote in the directory)
    and the reporters ``kiq gen reporter`` wrote there."""
    module = _identifier(snake(name), "app")
    root = Path(directory)
    mine = sorted(p for p in root.glob("*.py") if p.stem != module)
    if workers:
        paths = [root / f"{w.removesuffix('.py')}.py" for w in workers]
        for p in paths:
            if not p.exists():
                raise GenError(f"no worker module {p}")
    else:
        paths = [p for p in mine if WORKER_MARK in p.read_text()]
    found = {p.stem: _workers_in(p) for p in paths}
    empty = [stem for stem, classes in found.items() if not classes]
    if empty:
        raise GenError(f"no Worker class with a queue= option in {', '.join(empty)}")
    reporters = {p.stem: _REPORTER.findall(p.read_text()) for p in mine if REPORTER_MARK in p.read_text()}
    return _write(directory, f"{module}.py", app_source(module, found, reporters), force)
