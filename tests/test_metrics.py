"""Execution metrics in the layouts Sidekiq 7's and 8's Metrics tabs read."""

from __future__ import annotations

import json
import time

from kiq import worker
from support import wait_for


def test_metrics_hashes_and_histograms_for_7_and_8(make_app, r):
    @worker(name="Report", retry=False)
    def report(ms: int, ok: bool) -> None:
        time.sleep(ms / 1000)
        if not ok:
            raise RuntimeError("x")

    app = make_app(workers=[report], heartbeat_interval=0.2)
    app.enqueue_bulk(report, [[0, True], [0, True], [50, True], [0, False]])
    # An ActiveJob job counts under the class it wraps, as Sidekiq counts it.
    r.lpush("queue:default", json.dumps({"class": "Report", "wrapped": "Reports::Monthly", "args": [0, True],
                                         "jid": "a" * 24, "retry": True}))
    app.start()
    wait_for(lambda: r.get("stat:processed") == "5", what="5 jobs")
    app.stop()
    t = time.gmtime()
    h7 = r.hgetall(f"j|{t.tm_year:04}{t.tm_mon:02}{t.tm_mday:02}|{t.tm_hour}:{t.tm_min}")
    if not h7:  # the minute turned between the jobs and this check
        h7 = r.hgetall(r.keys("j|20*")[0])
    assert h7["Report|p"] == "4" and h7["Report|f"] == "1" and int(h7["Report|ms"]) >= 50
    assert h7["Reports::Monthly|p"] == "1" and "Reports::Monthly|f" not in h7
    minute8 = [k for k in r.keys("j|*") if not k.startswith("j|20") and len(k.split(":")[-1]) == 2]
    ten8 = [k for k in r.keys("j|*") if not k.startswith("j|20") and len(k.split(":")[-1]) == 1]
    assert minute8 and ten8, r.keys("j|*")
    assert r.hgetall(minute8[0]) == h7 == r.hgetall(ten8[0])
    assert 0 < r.ttl(minute8[0]) <= 8 * 3600 and 8 * 3600 < r.ttl(ten8[0]) <= 72 * 3600
    hist8 = r.keys("h|Report-*")
    hist7 = [k for k in r.keys("Report-*")]
    assert len(hist8) == 1 and len(hist7) == 1
    for key in hist8 + hist7:
        counts = r.execute_command("BITFIELD_RO", key, *sum((["GET", "u16", f"#{i}"] for i in range(26)), []))
        # Two 0 ms runs in the first bucket (< 20 ms), the 50 ms run in bucket 3 (45-65 ms).
        assert counts[0] == 2 and counts[3] == 1 and sum(counts) == 3, counts
        assert 0 < r.ttl(key) <= 8 * 3600


def test_metrics_off(make_app, r):
    app = make_app(metrics=False, heartbeat_interval=0.2)
    app.enqueue_bulk("kiq.NotHere", [[1]])
    app.start()
    wait_for(lambda: r.get("stat:processed") == "1", what="job")
    app.stop()
    assert r.keys("j|*") == []
