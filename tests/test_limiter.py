"""Rate limiters, cluster-wide: each kind holds its definition when hammered
from several processes (measured on Redis's clock, which the limiters use),
waiters get room in bounded time without holding the GIL or the event loop,
a holder killed with -9 frees its slot after lock_timeout, the state is
readable in kiq.api and /metrics, and bad input is refused by name."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

import pytest
import redis

from kiq import Kiq, errors
from kiq.api import Api
from support import wait_for

HAMMER = textwrap.dedent(
    """
    import json, random, sys, threading, time
    import redis
    from kiq import Kiq, errors

    url, port, mode, seconds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    app = Kiq(url)
    r = redis.Redis(port=port)
    limiters = {
        "concurrent": app.limiter.concurrent("hammer-c", 3, wait_timeout=5, lock_timeout=30),
        "bucket": app.limiter.bucket("hammer-b", 10, "second", wait_timeout=5),
        "window": app.limiter.window("hammer-w", 20, 2, wait_timeout=5),
        "leaky": app.limiter.leaky("hammer-l", 5, 1, wait_timeout=5),
        "points": app.limiter.points("hammer-p", 30, 1, wait_timeout=5),
    }
    kinds = ["concurrent"] if mode == "concurrent" else ["bucket", "window", "leaky", "points"]
    out = {k: {"times": [], "over": 0, "max_wait": 0.0, "max_holders": 0} for k in kinds}
    lock = threading.Lock()
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds

    def run(kind):
        lim, mine = limiters[kind], out[kind]
        while time.monotonic() < deadline:
            points = random.randint(1, 5) if kind == "points" else 1
            t0 = time.monotonic()
            try:
                with lim.within_limit(points=points) as hold:
                    waited = time.monotonic() - t0
                    if kind == "concurrent":
                        n = r.incr("holders")       # enter, recorded in Redis
                        time.sleep(random.random() * 0.004)
                        r.decr("holders")           # exit
                    else:
                        n = 0
            except errors.OverLimit:
                with lock:
                    mine["over"] += 1
                continue
            with lock:
                mine["times"].append([hold.acquired_at, points])
                mine["max_wait"] = max(mine["max_wait"], waited)
                mine["max_holders"] = max(mine["max_holders"], n)

    ts = [threading.Thread(target=run, args=(k,)) for k in kinds for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps(out), flush=True)
    """
)


def hammer(url: str, port: int, mode: str, seconds: float, threads: int, procs: int = 3) -> dict[str, Any]:
    """Runs ``procs`` processes hammering the limiters together; merges what they measured."""
    ps = [subprocess.Popen([sys.executable, "-c", HAMMER, url, str(port), mode, str(seconds), str(threads)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    try:
        for p in ps:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in ps:  # start together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.communicate(timeout=seconds + 60)[0].strip().splitlines()[-1]) for p in ps]
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
    merged: dict[str, Any] = {}
    for res in results:
        for kind, m in res.items():
            agg = merged.setdefault(kind, {"times": [], "over": 0, "max_wait": 0.0, "max_holders": 0, "per_proc": []})
            agg["times"] += m["times"]
            agg["over"] += m["over"]
            agg["max_wait"] = max(agg["max_wait"], m["max_wait"])
            agg["max_holders"] = max(agg["max_holders"], m["max_holders"])
            agg["per_proc"].append(len(m["times"]))
    return merged


def test_concurrent_limiter_of_3_hammered_by_3_processes_never_has_4_holders(
    redis_url: str, redis_server: Any, r: redis.Redis
) -> None:
    got = hammer(redis_url, redis_server.port, "concurrent", seconds=10, threads=10)["concurrent"]
    print(f"concurrent: {len(got['times'])} acquisitions, per process {got['per_proc']}, most holders at once "
          f"{got['max_holders']}, longest wait {got['max_wait']:.3f}s, over limit {got['over']}")
    assert got["max_holders"] == 3, "at most 3 holders at once, and the limit was reached"
    assert int(r.get("holders") or 0) == 0
    assert got["over"] == 0, "every waiter got a slot within its wait_timeout (5 s)"
    assert all(n > 50 for n in got["per_proc"]), "every process got slots"


def test_rate_limiters_hold_their_definitions_across_3_processes(
    redis_url: str, redis_server: Any, r: redis.Redis
) -> None:
    got = hammer(redis_url, redis_server.port, "rates", seconds=5, threads=3)
    ms = {k: sorted((round(t * 1000), p) for t, p in v["times"]) for k, v in got.items()}
    for kind, v in got.items():
        print(f"{kind}: {len(v['times'])} acquisitions, per process {v['per_proc']}, over {v['over']}, "
              f"longest wait {v['max_wait']:.3f}s")
    # bucket: 10 per calendar second.
    per_second = Counter(t // 1000 for t, _ in ms["bucket"])
    assert max(per_second.values()) <= 10, per_second
    assert len(ms["bucket"]) >= 40, "about 10 per second for 5 s"
    # window: 20 in any 2 s ([t, t + 2000) ms).
    w = [t for t, _ in ms["window"]]
    assert max(sum(1 for u in w[i:] if u < t + 2000) for i, t in enumerate(w)) <= 20
    assert len(w) >= 40
    # leaky (5, drains 5 per second) and points (30 per second): what arrives
    # in [t_i, t_j] is at most the bucket plus what drained meanwhile.
    for kind, cap, per_ms in (("leaky", 5, 5 / 1000), ("points", 30, 30 / 1000)):
        seq = ms[kind]
        prefix = [0]
        for _, p in seq:
            prefix.append(prefix[-1] + p)
        worst = max(prefix[j + 1] - prefix[i] - (cap + per_ms * (seq[j][0] - seq[i][0]))
                    for i in range(len(seq)) for j in range(i, len(seq)))
        assert worst <= 1e-6, f"{kind}: {worst} over its definition"
        assert prefix[-1] >= cap * 4, f"{kind} let about its rate through"


KILLED = textwrap.dedent(
    """
    import sys, time
    from kiq import Kiq
    lim = Kiq(sys.argv[1]).limiter.concurrent("kill9", 1, lock_timeout=2)
    hold = lim.within_limit()
    hold.__enter__()
    print(hold.acquired_at, flush=True)
    time.sleep(600)
    """
)


def test_a_holder_killed_with_9_frees_its_slot_after_lock_timeout(redis_url: str, r: redis.Redis) -> None:
    p = subprocess.Popen([sys.executable, "-c", KILLED, redis_url], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    held_at = float(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    lim = Kiq(redis_url).limiter.concurrent("kill9", 1, wait_timeout=10, lock_timeout=2)
    with lim.within_limit() as hold:
        assert hold.acquired_at is not None
        freed_after = hold.acquired_at - held_at
    assert 2.0 <= freed_after < 3.5, f"the slot came back {freed_after:.3f}s after it was taken (lock_timeout 2 s)"


def test_waiting_holds_neither_the_gil_nor_the_event_loop(redis_url: str, r: redis.Redis) -> None:
    app = Kiq(redis_url)
    lim = app.limiter.concurrent("nogil", 1, wait_timeout=5)
    holder = lim.within_limit()
    holder.__enter__()
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    threading.Thread(target=spin, daemon=True).start()
    released = threading.Timer(0.5, lambda: holder.__exit__(None, None, None))
    released.start()
    t0 = time.monotonic()
    with lim.within_limit():
        waited = time.monotonic() - t0
    stop.set()
    assert 0.4 < waited < 2.0, "the waiter got the slot once it was released"
    assert ticks > 10_000, "another Python thread ran while the waiter waited"

    async def main() -> tuple[int, float]:
        beats = 0

        async def beat() -> None:
            nonlocal beats
            while True:
                beats += 1
                await asyncio.sleep(0.01)

        async with lim.within_limit():
            task = asyncio.ensure_future(beat())
            loop = asyncio.get_running_loop()
            t = loop.time()

            async def waiter() -> float:
                async with lim.within_limit():
                    return loop.time() - t

            pending = asyncio.ensure_future(waiter())
            await asyncio.sleep(0.5)
        waited = await pending
        task.cancel()
        return beats, waited

    beats, waited = asyncio.run(main())
    assert beats >= 20, "the event loop ran while a coroutine waited for the slot"
    assert 0.4 < waited < 2.0


def test_state_in_api_and_metrics(make_app: Any, r: redis.Redis) -> None:
    app = make_app(queues={"default": 1}, health_address="127.0.0.1:0")
    app.start()
    lim = app.limiter.concurrent("stripe-42", 3, wait_timeout=0.3)
    bucket = app.limiter.bucket("github", 100, "hour")
    with bucket.within_limit(points=7):
        pass
    with lim.within_limit(), lim.within_limit():
        states = {s.name: s for s in Api(app).limiters()}
        assert (states["stripe-42"].kind, states["stripe-42"].in_use, states["stripe-42"].capacity) == ("concurrent", 2, 3)
        assert (states["github"].in_use, states["github"].interval) == (7, 3600)
        with lim.within_limit():
            with pytest.raises(errors.OverLimit, match=r'concurrent limiter "stripe-42" \(3 at once\) is over its limit'):
                with lim.within_limit():
                    pass
        body = urllib.request.urlopen(f"http://{app.health_address}/metrics", timeout=5).read().decode()
    for line in ('kiq_limiter_in_use{kind="concurrent",name="stripe-42"} 2',
                 'kiq_limiter_capacity{kind="concurrent",name="stripe-42"} 3',
                 'kiq_limiter_waiting{kind="concurrent",name="stripe-42"} 0',
                 'kiq_limiter_in_use{kind="bucket",name="github"} 7',
                 'kiq_limiter_acquired_total{kind="concurrent",name="stripe-42"} 3',
                 'kiq_limiter_over_total{kind="concurrent",name="stripe-42"} 1'):
        assert line in body.splitlines(), f"{line} in\n{body}"
    assert {s.name: s.in_use for s in Api(app).limiters()}["stripe-42"] == 0, "every slot given back"


def test_waiters_are_counted(redis_url: str, r: redis.Redis) -> None:
    app = Kiq(redis_url)
    lim = app.limiter.concurrent("busy", 1, wait_timeout=3)
    with lim.within_limit():
        waiter = threading.Thread(target=lambda: lim.within_limit().__enter__())
        waiter.start()
        wait_for(lambda: {s.name: s.waiting for s in Api(app).limiters()}.get("busy") == 1, what="one waiter")
    waiter.join(5)
    assert {s.name: s.waiting for s in Api(app).limiters()}["busy"] == 0


def test_unlimited_and_sandboxed_limiters_never_touch_redis(r: redis.Redis) -> None:
    app = Kiq("redis://127.0.0.1:1/0")  # nothing listens there
    with app.limiter.unlimited().within_limit() as hold:
        assert hold.acquired_at == 0.0
    box = Kiq(test_mode="sandbox")
    lim = box.limiter.concurrent("anything", 1)
    with lim.within_limit(), lim.within_limit():  # always room in the sandbox
        pass


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda a: a.limiter.bucket("api", 10, "fortnight"), 'unknown interval "fortnight"'),
        (lambda a: a.limiter.window("api", 10, "weekly"), 'unknown interval "weekly"'),
        (lambda a: a.limiter.bucket("api", 10, 3), "calendar interval"),
        (lambda a: a.limiter.concurrent("api", 0), 'needs a size of at least 1, not 0'),
        (lambda a: a.limiter.window("api", 0, 1), "needs a count of at least 1, not 0"),
        (lambda a: a.limiter.points("api", -5, 1), "needs points of at least 1, not -5"),
        (lambda a: a.limiter.concurrent("my api", 1), "contains a space"),
        (lambda a: a.limiter.concurrent("a" * 201, 1), "201 characters long; the most is 200"),
        (lambda a: a.limiter.concurrent("é", 1), "names use letters, digits"),
        (lambda a: a.limiter.concurrent("", 1), "needs a name"),
        (lambda a: a.limiter.concurrent("api", True), "size must be an int"),
        (lambda a: a.limiter.concurrent("api", 1, wait_timeout=-1), "wait_timeout must be a non-negative"),
        (lambda a: a.limiter.concurrent("api", 1, lock_timeout=0), "lock_timeout must be a positive"),
        (lambda a: a.limiter.leaky("api", 5, float("inf")), "interval of a leaky limiter must be a positive"),
        (lambda a: a.limiter.concurrent("api", 1, reschedule=-1), "reschedule must be an int >= 0"),
        (lambda a: a.limiter.points("api", 10, 1).within_limit(points=11).__enter__(), "could never fit"),
        (lambda a: a.limiter.concurrent("api", 2).within_limit(points=2).__enter__(), "takes no points"),
    ],
)
def test_bad_input_is_refused_by_name(make: Any, message: str, redis_url: str) -> None:
    with pytest.raises(errors.ConfigError, match=message):
        make(Kiq(redis_url))
