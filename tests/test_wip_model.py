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
