"""ActiveJob on Sidekiq, both ways, with Debian's activejob 6.1 and Sidekiq 6.4.1.

Rails apps enqueue ActiveJob classes through Sidekiq's wrapper job; a kiq
worker named as the ActiveJob class runs them, and ``kiq.active_job`` builds
jobs a Ruby ActiveJob class runs.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from kiq import Kiq, Worker, active_job
from kiq.activejob import SIDEKIQ_WRAPPER, WRAPPER
from kiq.errors import CodecError, ConfigError
from kiq.testing import assert_enqueued, drain
from support import require_ruby, ruby, sidekiq_server, wait_for

ACTIVE_JOB = """
require "active_job"
ActiveJob::Base.queue_adapter = :sidekiq
ActiveJob::Base.logger = Logger.new(nil)
"""


@pytest.fixture(scope="module")
def activejob_available() -> None:
    require_ruby()
    if subprocess.run(["ruby", "-e", 'require "active_job"'], capture_output=True).returncode != 0:
        pytest.fail("Ruby ActiveJob is not installed: apt-get install ruby-activejob")


class WelcomeJob(Worker, name="WelcomeJob", queue="mail"):
    seen: list[tuple[str, list[Any], dict[str, Any]]] = []

    def perform(self, *args: Any, **kwargs: Any) -> None:
        WelcomeJob.seen.append((self.jid, list(args), kwargs))
        if args and args[0] == "fail":
            raise ValueError("mail server said no")


@pytest.fixture(autouse=True)
def _reset() -> None:
    WelcomeJob.seen = []


@pytest.mark.usefixtures("activejob_available")
def test_rails_perform_later_runs_in_kiq_with_arguments_decoded(make_app, redis_url, r):
    jid = ruby(
        ACTIVE_JOB
        + """
        class WelcomeJob < ActiveJob::Base
          queue_as :mail
          def perform(*args, **kw); end
        end
        job = WelcomeJob.perform_later(1, "x", {"a" => {b: [2, nil]}}, :sym, Time.utc(2026, 12, 1, 12), user: "ada")
        WelcomeJob.set(wait: 1).perform_later("later")
        puts job.provider_job_id
        """,
        redis_url,
    ).strip()
    app = make_app(queues={"mail": 2}, workers=[WelcomeJob])
    app.start()
    wait_for(lambda: len(WelcomeJob.seen) == 2, timeout=15, what="2 ActiveJob jobs run by kiq")
    by_jid = {j: (a, k) for j, a, k in WelcomeJob.seen}
    assert by_jid[jid] == ([1, "x", {"a": {"b": [2, None]}}, "sym", "2026-12-01T12:00:00.000000000Z"], {"user": "ada"})
    assert [a for a, _ in by_jid.values() if a != by_jid[jid][0]] == [["later"]]
    wait_for(lambda: r.get("stat:processed") == "2", what="stats")


@pytest.mark.usefixtures("activejob_available")
def test_a_failing_activejob_job_is_retried_as_sidekiq_shows_it(make_app, redis_url, r):
    ruby(ACTIVE_JOB + 'class WelcomeJob < ActiveJob::Base; queue_as :mail; end\nWelcomeJob.perform_later("fail")',
         redis_url)
    app = make_app(queues={"mail": 1}, workers=[WelcomeJob])
    app.start()
    wait_for(lambda: r.zcard("retry") == 1, what="the failure in the retry set")
    report = json.loads(ruby(
        ACTIVE_JOB + """
        j = Sidekiq::RetrySet.new.first
        puts JSON.generate({"display_class" => j.display_class, "display_args" => j.display_args,
                            "error_class" => j["error_class"], "wrapped" => j["wrapped"], "klass" => j.klass})
        """,
        redis_url,
    ))
    assert report == {"display_class": "WelcomeJob", "display_args": ["fail"], "error_class": "ValueError",
                      "wrapped": "WelcomeJob", "klass": WRAPPER}


RUBY_ACTIVE_JOBS = ACTIVE_JOB + """
class InvoiceJob < ActiveJob::Base
  def perform(number, details, user:, copies: 1)
    Sidekiq.redis do |c|
      c.rpush("aj:results", JSON.generate({
        "number" => number, "details" => details, "key_classes" => details.keys.map { |k| k.class.name }.uniq,
        "user" => user, "copies" => copies, "job_id" => job_id, "provider_job_id" => provider_job_id,
        "queue" => queue_name, "priority" => priority, "executions" => executions }))
    end
  end
end
"""


@pytest.mark.usefixtures("activejob_available")
def test_kiq_enqueues_an_activejob_job_a_ruby_sidekiq_server_runs(make_app, redis_url, r):
    app = make_app()
    job = active_job("InvoiceJob", [7, {"lines": [1, 2], "note": {"x": None}}], {"user": "ada", "copies": 2},
                     queue="billing", priority=3)
    jid = app.enqueue(job)
    plain = app.enqueue(active_job("InvoiceJob", [8, {}], {"user": "bob"}, queue="billing",
                                   wrapper=WRAPPER), delay=1)
    with sidekiq_server(redis_url, RUBY_ACTIVE_JOBS, "-q", "billing", "-c", "2"):
        wait_for(lambda: r.llen("aj:results") == 2, timeout=40, what="2 ActiveJob jobs run by Ruby")
    results = {d["provider_job_id"]: d for d in map(json.loads, r.lrange("aj:results", 0, -1))}
    first = results[jid]
    assert first["number"] == 7 and first["details"] == {"lines": [1, 2], "note": {"x": None}}
    assert first["key_classes"] == ["String"]  # string-keyed hashes, as Rails' own serializer gives
    assert (first["user"], first["copies"], first["queue"], first["priority"]) == ("ada", 2, "billing", 3)
    assert first["job_id"] == job.args[0]["job_id"] and first["executions"] == 1
    assert (results[plain]["number"], results[plain]["user"], results[plain]["copies"]) == (8, "bob", 1)


def test_sandbox_lists_and_drains_activejob_jobs_by_their_class() -> None:
    app = Kiq(test_mode="sandbox", workers=[WelcomeJob])
    app.enqueue(active_job("WelcomeJob", ["hi", {"a": 1}], {"user": "ada"}, queue="mail"))
    assert_enqueued(app, WelcomeJob, args=["hi", {"a": 1}], kwargs={"user": "ada"}, queue="mail")
    assert drain(app) == 1
    assert [(a, k) for _, a, k in WelcomeJob.seen] == [(["hi", {"a": 1}], {"user": "ada"})]


def test_bad_activejob_jobs_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="class name"):
        active_job("")
    with pytest.raises(ConfigError, match="wrapper must be"):
        active_job("X", wrapper="Nope")
    with pytest.raises(ConfigError, match="kwargs must be a dict"):
        active_job("X", [], ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="_aj_globalid"):
        active_job("X", [{"_aj_globalid": "gid://x"}])
    with pytest.raises(CodecError, match="datetime"):
        import datetime as dt

        active_job("X", [dt.datetime.now()])
    assert active_job("X", wrapper=SIDEKIQ_WRAPPER).class_name == SIDEKIQ_WRAPPER


def test_a_malformed_envelope_goes_through_the_retry_path(make_app, r):
    r.sadd("queues", "mail")
    r.lpush("queue:mail", json.dumps({"class": WRAPPER, "args": [{"arguments": []}], "jid": "a" * 24, "retry": 1,
                                      "queue": "mail"}))
    app = make_app(queues={"mail": 1}, workers=[WelcomeJob])
    app.start()
    member = wait_for(lambda: r.zrange("retry", 0, -1), what="the malformed job in the retry set")[0]
    failed = json.loads(member)
    assert "not an ActiveJob envelope: no job_class" in failed["error_message"]
    assert WelcomeJob.seen == []
