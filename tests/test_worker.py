"""Workers: Sidekiq's verbs (perform_async, perform_in, perform_at, set) on the
app a worker is registered in, arguments checked against ``perform`` when a
job is built, and registering a worker twice."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from kiq import Job, Kiq, Worker, worker
from kiq.errors import ArgumentError, ConfigError
from support import wait_for


class HardJob(Worker, name="VerbsHardJob", queue="hard", retry=5):
    def perform(self, name: str, count: int) -> None:
        pass


class Optional(Worker, name="VerbsOptional"):
    def perform(self, a: int, b: int = 2, *rest: int) -> None:
        pass


@worker(name="verbs.notify", queue="mail")
def notify(user_id: int, text: str = "hi") -> None:
    pass


def queued(r, queue: str) -> list[dict]:
    return [json.loads(p) for p in reversed(r.lrange(f"queue:{queue}", 0, -1))]


def test_perform_async_in_at_and_set_enqueue_to_the_registered_app(make_app, r):
    class Mailer(Worker, name="VerbsMailer", queue="mail", retry=3):
        def perform(self, to: str) -> None:
            pass

    @worker(name="verbs.ping")
    def ping(n: int) -> None:
        pass

    app = make_app(workers=[Mailer, ping])
    t0 = time.time()
    jids = [
        Mailer.perform_async("ada"),
        ping.perform_async(1),
        Mailer.set(queue="urgent", retry=False, tags=["vip"]).perform_async("bob"),
        ping.set(queue="other").perform_async(2),
    ]
    later = Mailer.perform_in(60, "cy")
    at = ping.perform_at(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), 3)
    soon = Mailer.set(queue="urgent").perform_in(dt.timedelta(seconds=30), "dee")
    app.flush(5)
    [a] = queued(r, "mail")
    assert (a["jid"], a["class"], a["args"], a["retry"]) == (jids[0], "VerbsMailer", ["ada"], 3)
    [p] = queued(r, "default")
    assert (p["jid"], p["class"], p["args"]) == (jids[1], "verbs.ping", [1])
    [u] = queued(r, "urgent")
    assert (u["jid"], u["args"], u["retry"], u["tags"]) == (jids[2], ["bob"], False, ["vip"])
    [o] = queued(r, "other")
    assert o["jid"] == jids[3]
    scheduled = {json.loads(m)["jid"]: (json.loads(m), s) for m, s in r.zrange("schedule", 0, -1, withscores=True)}
    assert set(scheduled) == {later, at, soon}
    assert t0 + 59 < scheduled[later][1] < time.time() + 61
    assert t0 + 3599 < scheduled[at][1] < time.time() + 3601
    assert scheduled[soon][0]["queue"] == "urgent" and t0 + 29 < scheduled[soon][1] < time.time() + 31


def test_verbs_need_exactly_one_app(make_app):
    class Lonely(Worker, name="VerbsLonely"):
        def perform(self) -> None:
            pass

    with pytest.raises(ConfigError, match=r"Lonely.perform_async\(\) has no app .*app.register\(Lonely\)"):
        Lonely.perform_async()
    with pytest.raises(ConfigError, match="not registered"):
        Lonely.set(queue="x").perform_in(5)
    first = make_app(workers=[Lonely])
    make_app(workers=[Lonely])
    with pytest.raises(ConfigError, match=r"cannot choose between the 2 kiq.Kiq apps.*app.enqueue\(Lonely.new"):
        Lonely.perform_async()
    assert first.enqueue(Lonely.new())  # naming the app always works

    class Child(Lonely, name="VerbsChild"):
        pass

    with pytest.raises(ConfigError, match="not registered"):
        Child.perform_async()  # a subclass is a worker of its own, registered nowhere yet


def test_arguments_are_checked_against_perform_when_the_job_is_built(make_app, r):
    with pytest.raises(ArgumentError, match=r"HardJob.perform\(\) takes 2 arguments \(name, count\), but the job "
                                            r"was given 1: \['only-one'\]"):
        HardJob.new("only-one")  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # ArgumentError is a TypeError too
        HardJob.new("a", 1, 2)  # type: ignore[call-arg]
    with pytest.raises(ArgumentError, match=r"notify\(\) takes 1 to 2 arguments \(user_id, text\), but the job was "
                                            "given 3"):
        notify.new(1, "x", "y")  # type: ignore[call-arg]
    with pytest.raises(ArgumentError, match="at least 1"):
        Optional.new()  # type: ignore[call-arg]
    assert Optional.new(1).args == (1,) and Optional.new(1, 2, 3, 4).args == (1, 2, 3, 4)
    assert notify.new(7).args == (7,)
    app = make_app(workers=[HardJob])
    with pytest.raises(ArgumentError, match=r"given 1: \['x'\]"):
        app.enqueue_bulk(HardJob, [["a", 1], ["x"]])
    with pytest.raises(ArgumentError):
        HardJob.perform_async("too", "many", "args")  # type: ignore[call-arg]
    with pytest.raises(ArgumentError):
        Kiq(test_mode="sandbox", periodics=[("* * * * *", HardJob, {"args": ["one"]})])
    app.flush(5)
    assert r.llen("queue:hard") == 0, "nothing of a rejected bulk was pushed"
    with pytest.raises(ConfigError, match="positional arguments only"):
        HardJob.new("a", count=1)


def test_registering_a_worker_again_is_a_no_op_but_a_name_clash_is_an_error():
    app = Kiq(test_mode="sandbox", workers=[HardJob, notify])
    app.register(HardJob, notify)
    app.register(HardJob)
    assert sorted(app.workers) == ["VerbsHardJob", "verbs.notify"]

    class Impostor(Worker, name="VerbsHardJob"):
        def perform(self) -> None:
            pass

    with pytest.raises(ConfigError, match="two different workers are registered under the name 'VerbsHardJob'"):
        app.register(Impostor)
    assert app.workers["VerbsHardJob"].source is HardJob


def test_a_worker_named_after_main_explains_a_missing_worker(make_app, r):
    """`python tasks.py` registers __main__.Resize; a job for tasks.Resize says why it finds no worker."""

    class Resize(Worker):
        def perform(self, path: str) -> None:
            pass

    Resize.__module__, Resize.__qualname__ = "__main__", "Resize"
    assert Resize.wire_name() == "__main__.Resize"
    app = make_app(workers=[Resize])
    app.enqueue(Job("tasks.Resize", ["a.png"]))
    app.start()
    [entry] = wait_for(lambda: r.zrange("retry", 0, -1), what="the job in the retry set")
    message = json.loads(entry)["error_message"]
    assert message.startswith("no worker is registered for class 'tasks.Resize' in this process")
    assert "a module run as a script (python tasks.py) is named __main__" in message
    assert "name='Resize'" in message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": ""}, "queue must be a non-empty str, not ''"),
        ({"queue": 5}, "queue must be a non-empty str, not 5"),
        ({"retry": -1}, "retry must be True, False or a count >= 0, not -1"),
        ({"retry": "3"}, "retry must be True, False or an int, not '3'"),
        ({"dead": 0}, "dead must be True or False, not 0"),
        ({"backtrace": -2}, "backtrace must be True, False or a line count, not -2"),
        ({"retry_queue": ""}, "retry_queue must be a non-empty str"),
        ({"name": ""}, "name must be a non-empty str"),
        ({"tags": "urgent"}, "tags must be a list of str, not 'urgent'"),
        ({"unique_for": 0}, "unique_for must be a positive number of seconds, not 0"),
        ({"unique_for": True}, "unique_for must be a positive number of seconds, not True"),
        ({"unique_for": 5, "unique_until": "never"}, 'unique_until must be "success" or "start", not "never"'),
        ({"expires_in": float("nan")}, "expires_in must be a positive number of seconds, not NaN"),
        ({"timeout": dt.timedelta(seconds=-1)}, "timeout must be a positive number of seconds, not -1"),
        ({"hard_timeout": "1"}, "hard_timeout must be a positive number of seconds, not '1'"),
        ({"encrypt": 1}, "encrypt must be True or False, not 1"),
        ({"encrypt": True, "unique_for": 5}, "unique_for and encrypt cannot be combined"),
    ],
)
def test_worker_and_job_options_are_checked_once_with_a_message_naming_the_option(options, message):
    """One set of rules (the core's) for class keywords, ``@worker(...)``, ``X.set(...)`` and ``Job(...)``."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        worker(**options)(lambda: None)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        type("Bad", (Worker,), {}, **options)
    shared = {k: v for k, v in options.items() if k in ("queue", "retry", "unique_for", "unique_until",
                                                          "expires_in", "encrypt")}
    if shared == options:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            Job("X", [1, 2], **shared)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            notify.set(**shared)


def test_a_job_needs_a_class_name_and_an_argument_list():
    with pytest.raises(ConfigError, match="class_name must be a non-empty str, not ''"):
        Job("")
    with pytest.raises(ConfigError, match="class_name must be a non-empty str, not None"):
        Job(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="args must be a list or tuple, not str"):
        Job("X", "abc")  # type: ignore[arg-type]
    assert Job("X", range(3)).args == range(3)  # any sequence
