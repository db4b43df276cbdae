"""Connecting: password and ACL users, db numbers, TLS, against redis-servers
these tests start."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import redis

from kiq import Job, Kiq, worker
from kiq.errors import ConfigError, ConnectionError
from support import RedisServer, free_port, wait_for


@pytest.fixture
def secured(tmp_path: Path):
    server = RedisServer(None, "--requirepass", "s3cret", "--user", "app", "on", ">apppass", "~*", "&*", "+@all").start()
    yield server
    server.close()


def test_password_and_acl_user(secured: RedisServer) -> None:
    port = secured.port
    Kiq(f"redis://:s3cret@127.0.0.1:{port}/0").enqueue(Job("X", [1]), sync=True)
    Kiq(f"redis://app:apppass@127.0.0.1:{port}/0").enqueue(Job("X", [2]), sync=True)
    check = redis.Redis(port=port, password="s3cret")
    assert check.llen("queue:default") == 2
    with pytest.raises(ConnectionError):
        Kiq(f"redis://app:wrong@127.0.0.1:{port}/0").enqueue(Job("X", [3]), sync=True)
    check.close()


def test_db_number_isolates(redis_server: RedisServer, r) -> None:
    ran = []

    @worker(name="InDb3")
    def in_db3(n: int) -> None:
        ran.append(n)

    app = Kiq(f"redis://127.0.0.1:{redis_server.port}/3", workers=[in_db3], poll_interval_average=0.1)
    app.enqueue(in_db3.new(1), sync=True)
    db3 = redis.Redis(port=redis_server.port, db=3, decode_responses=True)
    assert db3.llen("queue:default") == 1 and r.llen("queue:default") == 0
    with app:
        wait_for(lambda: ran == [1], what="job from db 3")
    db3.flushdb()
    db3.close()


def make_certs(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=kiq test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    make_certs(tmp_path)
    port = free_port()
    server = RedisServer(
        free_port(),
        "--tls-port", str(port),
        "--tls-cert-file", str(tmp_path / "server.crt"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.crt"),
        "--tls-auth-clients", "no",
    ).start()
    try:
        ran = []

        @worker(name="OverTls")
        def over_tls(n: int) -> None:
            ran.append(n)

        app = Kiq(f"rediss://127.0.0.1:{port}/0", workers=[over_tls], tls_ca_file=tmp_path / "ca.crt",
                  poll_interval_average=0.1)
        app.enqueue(over_tls.new(7), sync=True)
        plain = redis.Redis(port=server.port, decode_responses=True)
        assert json.loads(plain.lrange("queue:default", 0, -1)[0])["args"] == [7]
        with app:
            wait_for(lambda: ran == [7], what="job over TLS")
        with pytest.raises(ConnectionError):
            Kiq(f"rediss://127.0.0.1:{port}/0").enqueue(Job("X"), sync=True)  # the private CA is not trusted by default
        with pytest.raises(ConfigError, match="rediss://"):
            Kiq(f"redis://127.0.0.1:{port}/0", tls_ca_file=tmp_path / "ca.crt").enqueue(Job("X"), sync=True)
        plain.close()
    finally:
        server.close()
