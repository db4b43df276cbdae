"""The result writer cuts finished jobs off the right end of the in-progress
list by count, trusting its model of the list (wip.rs). When the list is
changed behind the process, the cut finds other jobs at its ends, writes
nothing, and the results go the payload way from then on: every job still
runs once, the foreign entries stay, and the user is told once."""

from __future__ import annotations

import threading

import pytest

from kiq import Worker
from support import wait_for

N = 20_000


@pytest.mark.parametrize("where", ["right", "middle"])
def test_a_list_changed_behind_the_process_loses_nothing(make_app, r, caplog, where: str) -> None:
    ran: list[str] = []
    lock = threading.Lock()

    class Tick(Worker, name="WipTick"):
        def perform(self, n: int) -> None:
            with lock:
                ran.append(self.jid)

    app = make_app(queues={"default": 5}, workers=[Tick])
    jids = app.enqueue_bulk(Tick, [[i] for i in range(N)])
    app.flush(10)
    foreign = '{"class":"Elsewhere","args":[],"jid":"f0"}'
    with caplog.at_level("WARNING", logger="kiq"):
        app.start()
        try:
            wait_for(lambda: len(ran) >= 2_000, timeout=30, what="some jobs ran")
            wip = next(iter(r.keys("kiq:wip|*")), None) or wait_for(lambda: next(iter(r.keys("kiq:wip|*")), None))
            if where == "right":
                # Where the next cut starts: as if another process put it back.
                r.rpush(wip, foreign)
            else:
                # Between jobs this process fetched: a cut across it finds another job K-th.
                # (The list changes meanwhile: tried until the pivot is still there.)
                def inserted() -> bool:
                    pivot = r.lindex(wip, r.llen(wip) // 2)
                    return pivot is not None and r.linsert(wip, "BEFORE", pivot, foreign) > 0
                wait_for(inserted, timeout=10, interval=0, what="the foreign entry inserted")
            wait_for(lambda: len(ran) == N, timeout=60, what="every job ran")
            wait_for(lambda: r.lrange(wip, 0, -1) == [foreign], timeout=10, what="only the foreign entry left")
        finally:
            app.stop(timeout=5)
    assert sorted(ran) == sorted(jids), "each job ran exactly once"
    assert int(r.get("stat:processed")) == N
    assert r.llen("queue:default") == 1 and r.lindex("queue:default", 0) == foreign, "the stop handed it back"
    said = [m for m in (rec.getMessage() for rec in caplog.records) if "does not hold the jobs" in m]
    assert len(said) == 1, said


def test_quick_jobs_behind_a_slow_one_leave_the_list_by_count(make_app, r) -> None:
    """A job still running does not make the results behind it go the
    payload way: the cuts pass over it (and over the quick ones running), and
    it stays in the list, at its end, until it finishes."""
    ran: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    class Slow(Worker, name="WipSlow"):
        def perform(self) -> None:
            release.wait(30)
            with lock:
                ran.append(self.jid)

    class Quick(Worker, name="WipQuick"):
        def perform(self, n: int) -> None:
            with lock:
                ran.append(self.jid)

    app = make_app(queues={"default": 4}, workers=[Slow, Quick])
    slow = app.enqueue(Slow.new())
    quick = app.enqueue_bulk(Quick, [[i] for i in range(3_000)])
    app.flush(10)
    app.start()
    try:
        wip = wait_for(lambda: next(iter(r.keys("kiq:wip|*")), None), what="the in-progress list")
        wait_for(lambda: len(ran) >= 10, what="some quick jobs ran")
        r.config_resetstat()  # (after the start's look for lists of dead processes, an LRANGE each)
        wait_for(lambda: len(ran) == 3_000 and r.llen(wip) == 1, timeout=30, what="the quick jobs settled")
        # The payload way reads the list's end (LRANGE) and passes each payload: never taken here.
        assert r.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0) == 0
        assert '"WipSlow"' in r.lindex(wip, 0)
        release.set()
        wait_for(lambda: len(ran) == 3_001 and not r.exists(wip), timeout=10, what="the slow job settled")
    finally:
        release.set()
        app.stop(timeout=5)
    assert sorted(ran) == sorted([slow, *quick]) and int(r.get("stat:processed")) == 3_001
