"""Periodic jobs: three processes, a fast-forwarded clock over 30 simulated
minutes, the leader killed midway: every due minute enqueued exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from kiq import Kiq, Worker
from kiq.errors import ConfigError, CrontabError
from support import wait_for

T0 = 1_800_000_000 - 1_800_000_000 % 3600  # an hour boundary, simulated

PROCESS = textwrap.dedent(
    """
    import sys, threading
    from kiq import Kiq
    url, t0, wall0 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    app = Kiq(url, queues={"unused": 1}, leader_ttl=1, orphan_check_interval=None, heartbeat_interval=0.5,
              periodics=[("* * * * *", "Tick"),
                         ("*/5 * * * *", "Five", {"args": [1, "x"], "queue": "cron", "retry": 3, "tags": ["p"]})],
              periodic_clock=(t0, wall0, 60.0))
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def minutes(r, queue: str) -> list[int]:
    return [int(json.loads(p)["kiq_periodic_at"]) for p in r.lrange(f"queue:{queue}", 0, -1)]


def test_every_due_minute_exactly_once_across_a_leader_kill(redis_url, r):
    wall0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS, redis_url, str(T0), str(wall0)],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        ids = [p.stdout.readline().strip() for p in procs if p.stdout]
        # 60 simulated minutes a real second: 15 minutes in, kill the leader.
        wait_for(lambda: len(minutes(r, "default")) >= 15, timeout=30, what="15 simulated minutes")
        leader = r.get("kiq:leader")
        victim = ids.index(leader)
        procs[victim].kill()
        wait_for(lambda: len(minutes(r, "default")) >= 31, timeout=30, what="31 simulated minutes")
    finally:
        for p in procs:
            p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
    ticks = sorted(minutes(r, "default"))
    assert ticks == list(range(ticks[0], ticks[-1] + 60, 60)), "no minute skipped or doubled"
    assert len(ticks) >= 31 and ticks[0] % 60 == 0
    fives = sorted(minutes(r, "cron"))
    first_five = ticks[0] + (-ticks[0]) % 300
    assert fives == list(range(first_five, ticks[-1] + 1, 300)), "every fifth minute, once"
    job = json.loads(r.lrange("queue:cron", 0, -1)[0])
    assert (job["class"], job["args"], job["queue"], job["retry"], job["tags"]) == ("Five", [1, "x"], "cron", 3, ["p"])
    assert r.get("kiq:leader") != leader


def test_a_new_entry_starts_now_and_the_leader_runs_it(make_app, r):
    ran: list[float] = []

    class Tick(Worker, name="Tick"):
        def perform(self) -> None:
            ran.append(time.time())

    app = make_app(workers=[Tick], leader_ttl=1, periodics=[("* * * * *", Tick)])
    if time.time() % 60 > 50:  # keep the test inside one minute: the next one would rightly run again
        time.sleep(60.2 - time.time() % 60)
    app.start()
    wait_for(lambda: app.is_leader, what="leadership")
    wait_for(lambda: ran, timeout=10, what="this minute's job")
    assert r.hlen("kiq:periodic") == 1
    time.sleep(1.5)
    assert len(ran) == len({int(t // 60) for t in ran}) == 1, "one job per minute, not per tick"


def test_bad_periodics_fail_at_construction():
    with pytest.raises(CrontabError, match="minute field"):
        Kiq(periodics=[("61 * * * *", "X")])
    with pytest.raises(ConfigError):
        Kiq(periodics=[("* * * * *",)])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="args"):
        Kiq(periodics=[("* * * * *", "X", {"args": "nope"})])
