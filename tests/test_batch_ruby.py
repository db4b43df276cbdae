"""A Python batch whose callback target is a Ruby class, run by a real Ruby
Sidekiq 6.4.1 server: callbacks are ordinary jobs, so a Ruby worker gets the
status hash and the options as its arguments."""

from __future__ import annotations

import json

import pytest
import redis

from kiq import Kiq, worker
from support import require_ruby, sidekiq_server, wait_for

RUBY_CALLBACK = """
module Billing
  class BatchDone
    include Sidekiq::Worker
    def perform(status, options)
      Sidekiq.redis { |c| c.rpush("ruby:callbacks", JSON.generate("jid" => jid, "status" => status, "options" => options)) }
    end
  end
end
"""


def test_a_ruby_success_target_gets_the_status_hash(make_app, redis_url: str, r: redis.Redis) -> None:
    require_ruby()
    ran: list[int] = []

    @worker(name="Py.Work")
    def work(n: int) -> None:
        ran.append(n)

    app: Kiq = make_app(queues={"default": 5}, workers=[work])
    batch = app.batch(description="ruby callback", callback_queue="rb")
    batch.on("success", "Billing::BatchDone", {"invoice": 42, "note": "héllo"})
    with batch.jobs():
        app.enqueue_bulk(work, [[i] for i in range(20)])
    app.start()
    wait_for(lambda: r.llen("queue:rb") == 1, timeout=20, what="the callback job on queue rb")
    with sidekiq_server(redis_url, RUBY_CALLBACK, "-q", "rb", "-c", "2") as proc:
        wait_for(lambda: r.llen("ruby:callbacks") == 1, timeout=40, what=f"the Ruby callback (pid {proc.pid})")
    [got] = [json.loads(x) for x in r.lrange("ruby:callbacks", 0, -1)]
    status = got["status"]
    assert got["options"] == {"invoice": 42, "note": "héllo"}
    assert status["bid"] == batch.bid and status["event"] == "success"
    assert (status["total"], status["pending"], status["failures"]) == (20, 0, 0)
    assert status["description"] == "ruby callback" and status["complete"] is True
    assert status["failed_jids"] == [] and status["parent_bid"] is None
    assert sorted(ran) == list(range(20))
    # A class name's callback may run in Ruby, where kiq never sees it end: it is
    # pushed once and not awaited (a parent batch would not wait for it).
    done = app.batch_status(batch.bid)
    assert done["fired"] == ["complete", "success"] and done["callbacks_done"] == ["complete", "success"]
    [job] = [json.loads(x) for x in r.lrange("queue:rb", 0, -1)] or [None]
    assert job is None, "Sidekiq took it"


@pytest.fixture(autouse=True)
def _ruby() -> None:
    require_ruby()
