"""Golden payloads from Sidekiq 6.4.1 (captured), 7.x and 8.x (constructed from
the wire reference) run in kiq, fail, and keep every field kiq does not own,
byte for byte, through the retry path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kiq import Worker
from kiq.activejob import SIDEKIQ_WRAPPER, WRAPPER
from support import raw_fields, wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "sidekiq"
OWNED = {"queue", "error_message", "error_class", "failed_at", "retried_at", "retry_count", "error_backtrace"}
MOVED = {"enqueued_at", "retry"}  # rewritten (or added) when the scheduler moves a job


def golden() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(FIXTURES.glob("sidekiq-*.json")):
        doc = json.loads(path.read_text())
        for p in doc["payloads"]:
            out.append((f"{path.stem}/{p['name']}", p["where"], p["payload"]))
    return out


CASES = [c for c in golden() if c[1] != "dead"]
# What the ActiveJob fixtures' perform gets: positional arguments, then the keywords.
ACTIVE_JOB_ARGS: dict[str, list[Any]] = {
    "sidekiq-7.x/activejob_wrapper": [15, {"format": "pdf"}],
    "sidekiq-8.x/activejob_wrapper_cattr_array": ["all"],
}


@pytest.mark.parametrize(("name", "where", "payload"), CASES, ids=[c[0] for c in CASES])
def test_golden_payload_runs_and_keeps_its_fields(make_app, r, name: str, where: str, payload: str) -> None:
    job = json.loads(payload)
    seen: list[list[Any]] = []
    # An ActiveJob wrapper job runs as its ActiveJob class, keywords as kwargs.
    active = job["class"] in (WRAPPER, SIDEKIQ_WRAPPER)
    expected = ACTIVE_JOB_ARGS[name] if active else job["args"]

    class Golden(Worker, name=job["wrapped"] if active else job["class"], retry=5):
        def perform(self, *args: Any, **kwargs: Any) -> None:
            seen.append([*args, kwargs] if kwargs else list(args))
            raise RuntimeError("golden failure")

    queue = job.get("queue", "default")
    if where == "queue":
        r.lpush(f"queue:{queue}", payload)
    else:
        r.zadd(where, {payload: time.time() - 1})
    app = make_app(queues={queue: 2}, workers=[Golden])
    app.start()
    wait_for(lambda: seen, what=f"{name} to run")
    assert seen[0] == expected, "args decode exactly (big integers, floats, unicode)"
    entry = wait_for(lambda: [m for m in r.zrange("retry", 0, -1) if json.loads(m)["jid"] == job["jid"]
                              and json.loads(m)["error_message"] == "golden failure"], what="retry entry")[0]
    before, after = raw_fields(payload), raw_fields(entry)
    skip = OWNED | (MOVED if where != "queue" else set())
    for key, raw in before.items():
        if key not in skip:
            assert after.get(key) == raw, f"{name}: field {key} changed"
    assert json.loads(after["retry_count"]) == json.loads(before.get("retry_count", "-1")) + 1
    if "failed_at" in before:
        assert after["failed_at"] == before["failed_at"], "the first failure time is kept"
    if where != "queue":
        assert "at" not in after


def test_golden_backtraces_and_args_read_back() -> None:
    from kiq import _kiq

    for name, where, payload in golden():
        job = json.loads(payload)
        assert isinstance(job["args"], list), name
        if "error_backtrace" in job:
            assert _kiq.decode_backtrace(job["error_backtrace"]), name
