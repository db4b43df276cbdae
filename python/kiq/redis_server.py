"""A throwaway redis-server for tests: loopback only, a free port, nothing kept on disk.

Used by the ``kiq_redis`` pytest fixture and by kiq's own test suite::

    server = RedisServer().start()
    app = Kiq(server.url)
    ...
    server.close()

The binary is ``$KIQ_REDIS_SERVER`` or ``redis-server`` from ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["RedisServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server this process owns; ``extra`` are more ``redis-server`` arguments."""

    def __init__(self, port: int | None = None, *extra: str) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="kiq-redis-")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Starts it and waits until it accepts connections."""
        if self.proc is not None:  # restarting after a SHUTDOWN: reap the old process
            self.proc.wait(timeout)
        binary = os.environ.get("KIQ_REDIS_SERVER", "redis-server")
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary!r} was not found on PATH; install Redis (Debian: apt install redis-server) "
                               "or set KIQ_REDIS_SERVER")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port} (args {self.extra})") from None
                time.sleep(0.02)

    def flushall(self) -> None:
        """Empties every database (between tests)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
            reply = s.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"FLUSHALL failed: {reply!r}")

    def stop(self) -> None:
        """Kills it (the data goes too); :meth:`start` brings it back on the same port."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()
