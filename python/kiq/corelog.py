"""Re-emits the core's log records through stdlib ``logging``.

Core threads never wait for the GIL, so they queue their records; one daemon
thread per process (started on first use) moves them into the ``kiq``
logger. The core only produces records at or above the ``kiq`` logger's
level, which it follows: the pump re-reads it every second, so a level set
after an app started (or by another app) applies to every app's core alike.

At exit that thread is stopped and joined before the interpreter finalizes:
a thread still inside the core then would be ended by ``pthread_exit``,
whose forced unwinding through the core's frames can crash the process.
"""

from __future__ import annotations

import atexit
import logging
import threading

from kiq import _kiq

__all__ = ["start"]

_LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}
_lock = threading.Lock()
_thread: threading.Thread | None = None
_closing = threading.Event()


def _core_level(logger: logging.Logger) -> str:
    level = logger.getEffectiveLevel()
    if level <= logging.DEBUG:
        return "debug"
    if level <= logging.INFO:
        return "info"
    if level <= logging.WARNING:
        return "warning"
    if level <= logging.ERROR:
        return "error"
    return "off"


_applied: list[str] = []  # the level the core has now (set by start() and the pump)


def _apply(level: str) -> None:
    if _applied != [level]:
        _kiq.set_log_level(level)
        _applied[:] = [level]


def _pump() -> None:
    logger = logging.getLogger("kiq")
    while True:
        records, dropped = _kiq.drain_logs(1.0)
        with _lock:
            _apply(_core_level(logger))
        if dropped:
            logger.warning("kiq core dropped %d log records (nobody read them in time)", dropped)
        for level, _target, message in records:
            logger.log(_LEVELS.get(level, logging.INFO), "%s", message)
        if _closing.is_set():
            return


def _stop() -> None:
    """At exit (after apps flushed and stopped): the pump leaves the core and ends."""
    _closing.set()
    _kiq.wake_logs()
    if _thread is not None:
        _thread.join(5.0)


def start() -> None:
    """Sets the core's level from the ``kiq`` logger and starts the pump once."""
    global _thread
    with _lock:
        _apply(_core_level(logging.getLogger("kiq")))
        if _thread is None:
            _thread = threading.Thread(target=_pump, name="kiq-core-log", daemon=True)
            _thread.start()
            atexit.register(_stop)  # registered first, so it runs after the apps' own exit handlers
