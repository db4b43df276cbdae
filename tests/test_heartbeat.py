"""The heartbeat: Ruby Sidekiq 6.4.1 sees a kiq process and its running jobs,
they go on a clean stop and expire after kill -9, beats keep coming while a
job holds the GIL, and the fields 7.x/8.x read are there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kiq import Worker
from support import require_ruby, ruby, wait_for

GOLDEN = Path(__file__).parent / "fixtures" / "heartbeat"


def process_set(redis_url: str) -> list[dict]:
    return json.loads(
        ruby(
            """
            out = Sidekiq::ProcessSet.new.map { |p|
              {"identity" => p.identity, "hostname" => p["hostname"], "pid" => p["pid"], "queues" => p["queues"],
               "concurrency" => p["concurrency"], "busy" => p["busy"], "labels" => p.labels, "tag" => p.tag,
               "quiet" => p.stopping?, "started_at" => p["started_at"], "beat" => p["beat"]}
            }
            puts JSON.generate(out)
            """,
            redis_url,
        )
    )


def workers(redis_url: str) -> list[dict]:
    return json.loads(
        ruby(
            """
            out = Sidekiq::Workers.new.map { |pid, tid, work|
              {"process" => pid, "tid" => tid, "queue" => work["queue"], "class" => work["payload"]["class"],
               "args" => work["payload"]["args"], "jid" => work["payload"]["jid"], "run_at" => work["run_at"]}
            }
            puts JSON.generate(out)
            """,
            redis_url,
        )
    )


def test_ruby_sees_the_process_and_its_running_job(make_app, redis_url, r):
    require_ruby()
    release = threading.Event()

    class SlowJob(Worker, name="SlowJob", queue="events"):
        def perform(self, n: int, note: str) -> None:
            release.wait(20)

    app = make_app(queues={"default": 3, "events": 2}, workers=[SlowJob], tag="billing", labels=["python", "k8s"],
                   heartbeat_interval=0.2)
    t0 = int(time.time())
    jid = app.enqueue(SlowJob.new(7, "hé"))
    app.start()
    wait_for(lambda: r.hget(app.identity, "busy") == "1", what="busy heartbeat")
    [proc] = process_set(redis_url)
    host, pid, _ = app.identity.split(":")
    assert proc["identity"] == app.identity and proc["hostname"] == host and proc["pid"] == int(pid) == os.getpid()
    assert proc["queues"] == ["default", "events"] and proc["concurrency"] == 5 and proc["busy"] == 1
    assert proc["labels"] == ["python", "k8s"] and proc["tag"] == "billing" and proc["quiet"] is False
    assert isinstance(proc["started_at"], float) and abs(proc["beat"] - time.time()) < 5
    [work] = workers(redis_url)
    assert (work["process"], work["queue"], work["class"], work["args"], work["jid"]) == (
        app.identity, "events", "SlowJob", [7, "hé"], jid)
    assert t0 - 1 <= work["run_at"] <= time.time() + 1
    assert r.ttl(app.identity) <= 60 and r.ttl(f"{app.identity}:work") <= 60
    release.set()
    app.stop()
    assert process_set(redis_url) == [] and workers(redis_url) == []
    assert not r.sismember("processes", app.identity)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from kiq import Kiq, Worker

    class Hang(Worker, name="Hang"):
        def perform(self):
            threading.Event().wait(600)

    app = Kiq(sys.argv[1], workers=[Hang], heartbeat_interval=0.5, heartbeat_ttl=3)
    app.enqueue(Hang.new())
    app.start()
    print(app.identity, flush=True)
    threading.Event().wait(600)
    """
)


def test_entries_expire_after_kill_9(redis_url, r):
    require_ruby()
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, redis_url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    identity = proc.stdout.readline().strip()
    wait_for(lambda: r.hget(identity, "busy") == "1", what="the job running")
    assert [p["identity"] for p in process_set(redis_url)] == [identity] and len(workers(redis_url)) == 1
    proc.kill()
    proc.wait()
    proc.stdout.close()
    wait_for(lambda: not r.exists(identity), timeout=10, what="the heartbeat to expire")
    assert process_set(redis_url) == [] and workers(redis_url) == []


GIL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from kiq import Kiq, Worker

    class Hog(Worker, name="Hog"):
        def perform(self, seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                sum(range(20_000_000))  # one C call: holds the GIL throughout

    app = Kiq(sys.argv[1], workers=[Hog], heartbeat_interval=1)
    # Printed first: once the hog runs, this main thread barely gets the GIL.
    print(app.identity, flush=True)
    app.enqueue(Hog.new(float(sys.argv[2])))
    app.start()
    time.sleep(600)
    """
)


def test_heartbeats_keep_coming_while_a_job_holds_the_gil(redis_url, r):
    seconds = 30
    proc = subprocess.Popen([sys.executable, "-c", GIL_SCRIPT, redis_url, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        identity = proc.stdout.readline().strip()
        wait_for(lambda: r.hget(identity, "busy") == "1", what="the hog running")
        beats: list[float] = []
        end = time.monotonic() + seconds - 2
        while time.monotonic() < end:
            beat = float(r.hget(identity, "beat") or 0)
            if not beats or beat != beats[-1]:
                beats.append(beat)
            time.sleep(0.1)
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        assert len(beats) >= seconds - 5, beats
        assert max(gaps) < 2.5, f"a heartbeat came {max(gaps):.2f}s after the previous (interval 1 s)"
        assert r.hget(identity, "busy") == "1"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_heartbeat_fields_for_sidekiq_7_and_8(make_app, r):
    """Golden: the fields the Busy pages of 7.x and 8.x (8.0.9+ needs capsules; 8.1.2+
    reads concurrency from the hash) read, with their JSON types."""
    app = make_app(queues={"default": 25, "events": 5}, heartbeat_interval=0.2, tag="t", labels=["l"])
    app.start()
    wait_for(lambda: r.exists(app.identity), what="heartbeat")
    fields = r.hgetall(app.identity)
    golden = json.loads((GOLDEN / "process-hash.json").read_text())
    assert sorted(fields) == sorted(golden["hash_fields"])
    info = json.loads(fields["info"])
    assert list(info) == golden["info_fields"], "field order as Sidekiq 8.1 writes it, plus concurrency"
    for key, kind in golden["info_types"].items():
        assert type(info[key]).__name__ == kind, key
    assert info["capsules"] == golden["capsules_for_default_25_events_5"]
    assert info["weights"] == [{"default": 0}, {"events": 0}] and info["queues"] == ["default", "events"]
    assert info["embedded"] is False and info["version"].startswith("kiq-")
    assert fields["concurrency"] == "30" and fields["quiet"] == "false" and int(fields["rss"]) > 1000
    assert int(fields["rtt_us"]) > 0 and float(fields["beat"]) > 1.7e9


def test_quiet_shows_in_the_heartbeat_and_stops_fetching(make_app, r):
    ran: list[int] = []

    class Quick(Worker, name="Quick"):
        def perform(self, n: int) -> None:
            ran.append(n)

    app = make_app(workers=[Quick], heartbeat_interval=0.2)
    app.start()
    app.configure(quiet=True)
    wait_for(lambda: r.hget(app.identity, "quiet") == "true", what="quiet heartbeat")
    app.enqueue(Quick.new(1))
    time.sleep(0.5)
    assert ran == [] and r.llen("queue:default") == 1
    app.configure(quiet=False)
    wait_for(lambda: ran == [1], what="resumed")
    wait_for(lambda: r.hget(app.identity, "quiet") == "false", what="resumed heartbeat")


RUN_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from kiq import Kiq
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    app = Kiq(sys.argv[1], heartbeat_interval=0.2)
    print(app.identity, flush=True)
    app.run()
    print("stopped", flush=True)
    """
)


def test_os_signals_tstp_ttin_term(redis_url, r):
    proc = subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, redis_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    identity = proc.stdout.readline().strip()
    wait_for(lambda: r.hget(identity, "quiet") == "false", what="running")
    proc.send_signal(signal.SIGTSTP)
    wait_for(lambda: r.hget(identity, "quiet") == "true", what="quiet after TSTP")
    proc.send_signal(signal.SIGTTIN)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out
    assert "thread MainThread" in err and "kiq-default-0" in err, err[-2000:]
    assert not r.sismember("processes", identity)


@pytest.mark.parametrize("sig", ["TSTP", "TERM"])
def test_signals_through_redis(make_app, r, sig):
    app = make_app(heartbeat_interval=0.2)
    app.start()
    wait_for(lambda: r.exists(app.identity), what="heartbeat")
    r.lpush(f"{app.identity}-signals", sig)
    if sig == "TSTP":
        wait_for(lambda: r.hget(app.identity, "quiet") == "true", what="quiet")
        assert app.running
    else:
        wait_for(lambda: not app.running, what="stopped")
        wait_for(lambda: not r.sismember("processes", app.identity), what="gone from processes")
