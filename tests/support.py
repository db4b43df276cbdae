"""Test helpers: a real redis-server on a free port, waiting, raw JSON fields, Ruby."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kiq.redis_server import RedisServer as RedisServer, free_port as free_port  # re-exported for the tests

HERE = Path(__file__).parent


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Polls ``predicate`` until it returns something truthy; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def raw_fields(text: str) -> dict[str, str]:
    """Top-level fields of a JSON object as their raw JSON text, in order."""
    dec = json.JSONDecoder()
    out: dict[str, str] = {}
    i = text.index("{") + 1
    ws = " \t\r\n"
    while True:
        while text[i] in ws + ",":
            i += 1
        if text[i] == "}":
            return out
        key, i = json.decoder.scanstring(text, i + 1)
        while text[i] in ws + ":":
            i += 1
        _, end = dec.raw_decode(text, i)
        out[key] = text[i:end]
        i = end


# -- Ruby Sidekiq --------------------------------------------------------------

RUBY_PRELUDE = """
require "sidekiq"
require "sidekiq/api"
require "json"
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.configure_server { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.logger.level = Logger::WARN
"""


def require_ruby() -> None:
    if shutil.which("ruby") is None or shutil.which("sidekiq") is None:
        if os.environ.get("KIQ_SKIP_RUBY") == "1":
            pytest.skip("KIQ_SKIP_RUBY=1: Ruby Sidekiq interop tests skipped on request")
        pytest.fail("Ruby Sidekiq is not installed: apt-get install ruby-sidekiq (or set KIQ_SKIP_RUBY=1)")


def ruby(code: str, redis_url: str, timeout: float = 60) -> str:
    """Runs Ruby with Sidekiq loaded and the client pointed at ``redis_url``; returns stdout."""
    require_ruby()
    proc = subprocess.run(
        ["ruby", "-e", RUBY_PRELUDE + code],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"ruby failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc.stdout


@contextlib.contextmanager
def sidekiq_server(redis_url: str, workers_rb: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A real Ruby Sidekiq server process running the given worker code."""
    require_ruby()
    with tempfile.NamedTemporaryFile("w", suffix=".rb", delete=False) as f:
        f.write(RUBY_PRELUDE + workers_rb)
        path = f.name
    log = open(path + ".log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["sidekiq", "-r", path, *args],
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        os.unlink(path)
        os.unlink(path + ".log")
