"""The link between a swarm's parent and one child: a socket pair carrying
JSON messages, one per line.

The child reports (``fetching``, a hard-limited job's ``job``/``done``,
``recovered``); the parent commands (``quiet``, ``stop``, ``hurry``,
``dump``, ``recover``). Commands go over the link rather than as signals, so a
child that also gets the signal itself (Ctrl-C reaches the whole process
group; systemd signals the whole cgroup) acts once, not twice. The child's
end reaching end-of-file means the parent died.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

__all__ = ["Channel", "pair"]

#: A line longer than this is a bug, not a message.
MAX_LINE = 1 << 20


def pair() -> tuple[socket.socket, socket.socket]:
    """(parent's end, child's end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


class Channel:
    """One end of the link. The parent's end is non-blocking (its select loop
    reads it when readable and flushes what it could not send when
    writable); the child's blocks, and many threads may send on it."""

    def __init__(self, sock: socket.socket, *, blocking: bool) -> None:
        self.sock = sock
        sock.setblocking(blocking)
        self._blocking = blocking
        self._inbox = b""
        self._outbox = b""
        self._lock = threading.Lock()
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: str, **fields: Any) -> bool:
        """Sends one message; False when the other end is gone."""
        data = json.dumps({"m": kind, **fields}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self.closed:
                return False
            if self._blocking:
                try:
                    self.sock.sendall(data)
                    return True
                except OSError:
                    return False
            self._outbox += data
        return self.flush()

    @property
    def pending(self) -> bool:
        """Whether bytes wait to be sent (the parent's select loop waits until writable)."""
        return bool(self._outbox)

    def flush(self) -> bool:
        """Sends what the non-blocking end has queued, as far as it goes now."""
        with self._lock:
            while self._outbox and not self.closed:
                try:
                    sent = self.sock.send(self._outbox)
                except BlockingIOError:
                    return True
                except OSError:
                    return False
                self._outbox = self._outbox[sent:]
        return not self.closed

    def receive(self) -> list[dict[str, Any]] | None:
        """Reads what is there (the parent, when select says readable; the
        child, blocking until a message comes). Returns the whole messages
        read, or None at end-of-file."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            data = b""
        if not data:
            return None
        self._inbox += data
        *lines, self._inbox = self._inbox.split(b"\n")
        if len(self._inbox) > MAX_LINE:
            raise ValueError("a swarm message longer than 1 MiB")
        out = []
        for line in lines:
            msg = json.loads(line)
            if isinstance(msg, dict):
                out.append(msg)
        return out

    def close(self) -> None:
        with self._lock:
            self.closed = True
        self.sock.close()
