"""settle.lua's removal of finished jobs from an in-progress list, run
directly against Redis: it reads the list's right end once, cuts the
finished jobs off and pushes the jobs still running back, so whatever the
order results come in, exactly the finished jobs leave (the occurrence
nearest the right end, as `LREM -1` would), the others stay in their order,
and a result sent twice changes nothing twice."""

from __future__ import annotations

import random
import time

import pytest
import redis

from test_lua_scripts import HERE, loaded

WIP = "kiq:wip|me|default"
KEYS = ["kiq:acked|me", "retry", "dead", "stat:processed", "stat:failed",
        "stat:processed:d", "stat:failed:d", "kiq:stat:expired", "schedule", WIP]


class Settle:
    """settle.lua with plain results (done, counted as processed), numbered from 1,
    and optionally retried ones (`retry`) and a cut (`cut`: K jobs at the list's
    right end, by count: (K, the job expected at the right end, the K-th), or
    (K, the job expected F-th, the K-th, the offsets of the jobs in it still
    running, F))."""

    def __init__(self, r: redis.Redis) -> None:
        self.script = r.register_script(loaded(HERE / "settle.lua"))
        self.seq = 0

    def __call__(self, jobs: list[bytes], *, again: int | None = None, retry: list[bytes] = (),
                 cut: tuple | None = None) -> list:
        """Settles `jobs`; `again` sends them under the numbers they had before (a resend)."""
        seq = self.seq if again is None else again - 1
        args: list = [60000, 86400, time.time(), 0, 10000, len(retry), time.time(), 86400, 1000, 0]
        for job in retry:
            seq += 1
            args += [seq, 1, "retry", time.time() + 60, job, job, "pf", "", "", 0]
        args.append(len(jobs))
        for job in jobs:
            seq += 1
            args += [seq, 1, job]
        if cut is None:
            args.append(0)
        else:
            k, first, last, holes, f = (*cut, (), 1) if len(cut) == 3 else cut
            seq += k - len(holes)
            args += [1, 1, k, seq, f, first, last, len(holes), *holes]
        self.seq = max(self.seq, seq)
        return self.script(keys=KEYS, args=args)


def job(n: int) -> bytes:
    return b'{"class":"NoopJob","args":[%d],"jid":"j%d"}' % (n, n)


def fetched(r: redis.Redis, jobs: list[bytes]) -> None:
    """Puts jobs in the list as fetch.lua does: pushed on the left, oldest first."""
    r.lpush(WIP, *jobs)


def processed(r: redis.Redis) -> int:
    return int(r.get("stat:processed") or 0)


@pytest.mark.parametrize("seed", range(6))
def test_exactly_the_finished_jobs_leave_and_the_rest_keep_their_order(rb: redis.Redis, seed: int) -> None:
    rng = random.Random(seed)
    settle = Settle(rb)
    jobs = [job(n) for n in range(600)]
    fetched(rb, jobs)
    # Results come in batches of mostly the oldest jobs, some left running for
    # a while (a few or, for one seed, a hundred), in any order.
    running = list(jobs)
    done: list[bytes] = []
    while running:
        k = min(len(running), rng.choice([1, 5, 50, 200]))
        window = running[: k + rng.choice([0, 3, 100])]
        batch = rng.sample(window, min(k, len(window)))
        rng.shuffle(batch)
        assert settle(batch) == [[], [], []]
        done += batch
        running = [j for j in running if j not in set(batch)]
        left = rb.lrange(WIP, 0, -1)
        assert left == running[::-1], f"after {len(done)} results"
    assert not rb.exists(WIP)
    assert processed(rb) == 600


def test_a_job_listed_twice_leaves_once_per_result_nearest_the_right_end(rb: redis.Redis) -> None:
    settle = Settle(rb)
    a, b, c = job(1), job(2), job(3)
    fetched(rb, [a, b, a, c, a])  # the list, left to right: a c a b a
    settle([a, a])
    assert rb.lrange(WIP, 0, -1) == [a, c, b]
    settle([a])
    assert rb.lrange(WIP, 0, -1) == [c, b]
    # Listed twice behind many running jobs (past what is read of the right end).
    rb.delete(WIP)
    running = [job(n) for n in range(10, 80)]
    fetched(rb, running + [a, a])
    settle([a, a])
    assert rb.lrange(WIP, 0, -1) == running[::-1]


def test_results_of_jobs_not_in_the_list_remove_nothing_else(rb: redis.Redis) -> None:
    settle = Settle(rb)
    jobs = [job(n) for n in range(10)]
    fetched(rb, jobs)
    # Jobs another process already took back (this one was thought dead): not there.
    assert settle([job(100), jobs[0], job(101)]) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == jobs[1:][::-1]
    # Results for jobs far from the right end, behind more running jobs than are read past.
    assert settle(jobs[-3:]) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == jobs[1:7][::-1]


def test_a_result_sent_again_changes_nothing_twice(rb: redis.Redis) -> None:
    settle = Settle(rb)
    jobs = [job(n) for n in range(20)]
    fetched(rb, jobs + jobs[:5])  # the first five are listed twice
    settle(jobs[:5])
    before = rb.lrange(WIP, 0, -1)
    # The reply was lost and the same results are sent again, numbered as before.
    assert settle(jobs[:5], again=1) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == before
    assert processed(rb) == 5


def test_a_list_of_the_wrong_type_refuses_its_results_and_keeps_the_key(rb: redis.Redis) -> None:
    settle = Settle(rb)
    rb.set(WIP, "not a list")
    refused, fired, mismatched = settle([job(1), job(2)])
    assert refused[0::2] == [b"1", b"2"] and b"WRONGTYPE" in refused[1]
    assert fired == [] and mismatched == [] and rb.get(WIP) == b"not a list" and processed(rb) == 0


def test_a_cut_takes_exactly_k_jobs_off_the_right_end(rb: redis.Redis) -> None:
    settle = Settle(rb)
    jobs = [job(n) for n in range(10)]
    fetched(rb, jobs)
    # The 4 oldest by count; 6 (behind 4 and 5, still running) by its payload.
    assert settle([jobs[6]], cut=(4, jobs[0], jobs[3])) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == [jobs[9], jobs[8], jobs[7], jobs[5], jobs[4]]
    assert processed(rb) == 5
    assert settle([], cut=(2, jobs[4], jobs[5])) == [[], [], []]
    assert settle([], cut=(3, jobs[7], jobs[9])) == [[], [], []]
    assert not rb.exists(WIP) and processed(rb) == 10


@pytest.mark.parametrize("case", ["first", "kth", "short", "absent", "wrongtype"])
def test_a_cut_that_does_not_find_its_jobs_writes_nothing(rb: redis.Redis, case: str) -> None:
    settle = Settle(rb)
    jobs = [job(n) for n in range(6)]
    if case == "wrongtype":
        rb.set(WIP, "not a list")
    elif case != "absent":
        fetched(rb, jobs)
    if case == "kth":
        # Another job where the 3rd should be: a list changed behind the model.
        rb.lset(WIP, -3, job(99))
    k, last = (8, jobs[5]) if case == "short" else (3, jobs[2])
    first = job(98) if case == "first" else jobs[0]
    before = rb.lrange(WIP, 0, -1) if case != "wrongtype" else None
    assert settle([jobs[4]], retry=[jobs[5]], cut=(k, first, last)) == [[], [], [b"1"]]
    if case != "wrongtype":
        assert rb.lrange(WIP, 0, -1) == before
    assert processed(rb) == 0 and rb.zcard("retry") == 0 and not rb.exists("kiq:acked|me")
    # Written again without the cut, under the same numbers: applied once.
    if case in ("first", "kth", "short"):
        assert settle(jobs[:4], again=1, retry=[jobs[5]]) == [[], [], []]
        assert processed(rb) == 5 and rb.zcard("retry") == 1


def test_a_cut_is_made_before_a_duplicate_payload_is_removed_by_value(rb: redis.Redis) -> None:
    settle = Settle(rb)
    a, x = job(1), job(2)
    # Left to right: a (listed twice: this copy failed and retries), x (running), a (finished).
    fetched(rb, [a, x, a])
    assert settle([], retry=[a], cut=(1, a, a)) == [[], [], []]
    # The cut took the right end's a, the retry's LREM the other: x stays.
    assert rb.lrange(WIP, 0, -1) == [x]
    assert rb.zcard("retry") == 1 and processed(rb) == 2


def test_a_cut_sent_again_after_a_lost_reply_cuts_nothing_twice(rb: redis.Redis) -> None:
    settle = Settle(rb)
    jobs = [job(n) for n in range(6)]
    fetched(rb, jobs)
    assert settle([], cut=(3, jobs[0], jobs[2])) == [[], [], []]
    # The same call again (numbered as before): already applied, nothing is checked or cut.
    assert settle([], again=1, cut=(3, jobs[0], jobs[2])) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == [jobs[5], jobs[4], jobs[3]] and processed(rb) == 3


def test_a_cut_passes_over_jobs_still_running_and_keeps_their_order(rb: redis.Redis) -> None:
    settle = Settle(rb)
    jobs = [job(n) for n in range(10)]
    fetched(rb, jobs)
    # The 7 oldest by count but for 0 and 3 (offsets 1 and 4), still running: they stay, in order.
    assert settle([], cut=(7, jobs[1], jobs[6], (1, 4), 2)) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == [jobs[9], jobs[8], jobs[7], jobs[3], jobs[0]]
    assert processed(rb) == 5
    # Then 0 and 7 finish (7 behind 3, which runs on): a cut of 3 with 3 as its hole.
    assert settle([], cut=(3, jobs[0], jobs[7], (2,), 1)) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == [jobs[9], jobs[8], jobs[3]] and processed(rb) == 7
    # A cut that takes the whole list but a running job: the list holds just that one.
    assert settle([], cut=(3, jobs[8], jobs[9], (1,), 2)) == [[], [], []]
    assert rb.lrange(WIP, 0, -1) == [jobs[3]] and processed(rb) == 9


@pytest.mark.parametrize("seed", range(4))
def test_cuts_with_running_jobs_leave_exactly_the_running_ones(rb: redis.Redis, seed: int) -> None:
    """Random batches, as the result writer makes them: the finished jobs that
    are the list's right end but for running ones go by count, the rest by payload."""
    rng = random.Random(seed)
    settle = Settle(rb)
    jobs = [job(n) for n in range(400)]
    fetched(rb, jobs)
    live = list(jobs)  # oldest first, as the model sees the list from its right end
    while live:
        window = live[: rng.choice([3, 10, 40])]
        batch = set(rng.sample(window, rng.randint(1, len(window))))
        covered = [i for i, j in enumerate(window) if j in batch]
        width = covered[-1] + 1
        holes = tuple(i + 1 for i in range(width) if live[i] not in batch)
        assert settle([], cut=(width, live[covered[0]], live[covered[-1]], holes, covered[0] + 1)) == [[], [], []]
        live = [j for j in live if j not in batch]
        assert rb.lrange(WIP, 0, -1) == live[::-1]
    assert not rb.exists(WIP) and processed(rb) == 400
