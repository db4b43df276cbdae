"""Non-blocking HTTP for the swarm's parent, which serves health checks from
its single-threaded select loop: a request read from one accepted
connection, and a ``GET`` to a child's health port (``127.0.0.1``)."""

from __future__ import annotations

import errno
import socket

__all__ = ["Get", "Incoming", "respond"]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_MAX = 64 << 10


def respond(status: int, body: str, *, text: bool = False, head: bool = False) -> bytes:
    """A whole HTTP/1.1 response (the connection closes after it)."""
    data = body.encode()
    kind = "text/plain; version=0.0.4" if text else "application/json"
    lines = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    return lines.encode() + (b"" if head else data)


class Incoming:
    """One connection to the parent's health listener: reads the request line, then writes the answer."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        sock.setblocking(False)
        self.deadline = deadline
        self.data = b""
        self.out = b""
        #: (method, path) once the request head is in.
        self.request: tuple[str, str] | None = None
        self.done = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def readable(self) -> None:
        try:
            chunk = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        self.data += chunk
        if b"\r\n\r\n" in self.data or b"\n\n" in self.data or len(self.data) > 4096:
            parts = self.data.split(b"\r\n", 1)[0].decode("latin-1").split()
            self.request = (parts[0] if parts else "", parts[1] if len(parts) > 1 else "")

    def answer(self, payload: bytes) -> None:
        self.out = payload
        self.writable()

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if not self.out:
            self.close()

    def close(self) -> None:
        self.done = True
        self.sock.close()


class Get:
    """``GET path`` from ``host:port``, without blocking: the status and body once done."""

    def __init__(self, address: str, path: str, deadline: float) -> None:
        host, _, port = address.rpartition(":")
        self.deadline = deadline
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.out = f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode()
        self.data = b""
        self.status = 0
        self.body = ""
        self.done = False
        err = self.sock.connect_ex((host, int(port)))
        if err not in (0, errno.EINPROGRESS):
            self.finish()

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def sending(self) -> bool:
        return bool(self.out) and not self.done

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.finish()
            return
        self.out = self.out[sent:]

    def readable(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        self.data += chunk
        if not chunk or len(self.data) > _MAX:
            self.finish()

    def finish(self) -> None:
        """Ends it (answered, refused or timed out): ``status`` 0 unless an answer was read."""
        if self.done:
            return
        self.done = True
        self.sock.close()
        head, _, body = self.data.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        if len(parts) >= 2 and parts[1].isdigit():
            self.status = int(parts[1])
            self.body = body.decode("utf-8", "replace")
