"""A TCP proxy in front of a real redis-server that loses replies: it passes
every command through, and now and then closes the client's connection
instead of delivering Redis's answer, so the command ran but the client never
learns it (what a dropped connection or a timeout does in production)."""

from __future__ import annotations

import random
import socket
import threading

from kiq.redis_server import free_port


class LossyProxy:
    def __init__(self, upstream_port: int, loss: float, seed: int = 7) -> None:
        self.upstream_port = upstream_port
        self.loss = loss
        self.port = free_port()
        self.lost = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._stop = threading.Event()
        threading.Thread(target=self._accept, name="lossy-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _drop(self) -> bool:
        with self._lock:
            if self._random.random() < self.loss:
                self.lost += 1
                return True
            return False

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if replies and self._drop():
                    break  # the command ran; its answer never arrives
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._server.close()
