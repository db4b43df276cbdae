"""unfetch.lua, run directly against Redis: jobs a process held but no thread
started go from its in-progress list back to the front of their queue, oldest
taken first; a job no longer in the list (recovered by another process
meanwhile) is not pushed, so a call repeated after a lost reply duplicates
nothing; keys of the wrong type move nothing."""

from __future__ import annotations

import pytest
import redis

from test_lua_scripts import HERE, loaded

WIP, QUEUE, QUEUES = "kiq:wip|me|default", "queue:default", "queues"


def job(n: int) -> bytes:
    return b'{"class":"NoopJob","args":[%d],"jid":"j%d"}' % (n, n)


@pytest.fixture
def unfetch(rb: redis.Redis):
    script = rb.register_script(loaded(HERE / "unfetch.lua"))
    return lambda jobs: script(keys=[WIP, QUEUE, QUEUES], args=["default", *jobs])


def test_held_jobs_go_to_the_front_of_their_queue_oldest_first(rb: redis.Redis, unfetch) -> None:
    # The queue's newer jobs wait at its left end; fetched jobs were pushed on the list's left.
    rb.lpush(QUEUE, job(10), job(11))
    rb.lpush(WIP, *[job(n) for n in range(10)])
    assert unfetch([job(n) for n in range(6, 10)]) == 4  # the four newest, oldest first
    assert rb.lrange(WIP, 0, -1) == [job(n) for n in reversed(range(6))]
    taken = [rb.rpop(QUEUE) for _ in range(6)]
    assert taken == [job(6), job(7), job(8), job(9), job(10), job(11)]
    assert rb.smembers(QUEUES) == {b"default"}


def test_jobs_no_longer_in_the_list_are_not_pushed_and_a_repeat_moves_nothing(rb: redis.Redis, unfetch) -> None:
    rb.lpush(WIP, job(1), job(2), job(3))
    assert unfetch([job(2), job(3)]) == 2
    # The reply was lost: the same call again finds neither job in the list.
    assert unfetch([job(2), job(3)]) == 0
    # Another process recovered the list meanwhile: nothing to move.
    rb.delete(WIP)
    assert unfetch([job(1)]) == 0
    assert rb.lrange(QUEUE, 0, -1) == [job(3), job(2)]


def test_a_job_listed_twice_goes_back_once_per_copy_held(rb: redis.Redis, unfetch) -> None:
    rb.lpush(WIP, job(1), job(1))
    assert unfetch([job(1)]) == 1
    assert rb.lrange(WIP, 0, -1) == [job(1)] and rb.lrange(QUEUE, 0, -1) == [job(1)]


@pytest.mark.parametrize("key", [WIP, QUEUE, QUEUES])
def test_a_key_of_the_wrong_type_moves_nothing(rb: redis.Redis, unfetch, key: str) -> None:
    rb.lpush(WIP, job(1), job(2))
    if key == WIP:
        rb.delete(WIP)
    rb.hset(key, "x", "y")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        unfetch([job(2)])
    if key != WIP:
        assert rb.lrange(WIP, 0, -1) == [job(2), job(1)]
    assert key == QUEUE or rb.type(QUEUE) == b"none"
