"""Encryption in Sidekiq Enterprise's wire format, both ways with Ruby.

The Ruby side is written here from the format description (Base64 of a
Marshal'd ``Sidekiq::Enc(c, tag, iv, v, blob)``, AES-256-GCM over
``Marshal.dump(last_arg)``) with Ruby's own OpenSSL, Marshal and Base64; it is
not Sidekiq Enterprise's code, which kiq never uses.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Any

import pytest

from kiq import Job, Kiq, Reporter, Worker, worker
from kiq import _kiq
from kiq.api import Api, display_args
from kiq.errors import CodecError, ConfigError, DecryptionError
from kiq.reporters import JobInfo
from kiq.testing import assert_enqueued, drain, enqueued
from support import HERE, require_ruby, ruby, wait_for
from test_web_ui import Browser, web  # noqa: F401 - the Sidekiq Web UI fixture

K1, K2, K3 = bytes(range(32)), bytes(range(32, 64)), bytes(range(64, 96))
KEYS = {1: K1, 2: K2}

# The Ruby side of the format, with Ruby's OpenSSL::Cipher, Marshal, Struct and strict Base64.
RUBY_CRYPTO = f"""
require "openssl"
require "base64"
module Sidekiq
  Enc = Struct.new(:c, :tag, :iv, :v, :blob) unless const_defined?(:Enc)
end
KEYS = {{1 => ["{K1.hex()}"].pack("H*"), 2 => ["{K2.hex()}"].pack("H*"), 3 => ["{K3.hex()}"].pack("H*")}}

def envelope(version, tag, iv, blob)
  Base64.strict_encode64(Marshal.dump(Sidekiq::Enc.new("aes-256-gcm", tag, iv, version, blob)))
end

def seal_bytes(plain, version)
  cipher = OpenSSL::Cipher.new("aes-256-gcm").encrypt
  cipher.key = KEYS.fetch(version)
  iv = cipher.random_iv
  cipher.auth_data = ""
  blob = cipher.update(plain) + cipher.final
  envelope(version, cipher.auth_tag, iv, blob)
end

def seal(bag, version = 1)
  seal_bytes(Marshal.dump(bag), version)
end

# The bag and the exact plaintext bytes; raises unless the GCM tag verifies.
def unseal(text)
  env = Marshal.load(Base64.strict_decode64(text))
  raise "not a Sidekiq::Enc" unless env.is_a?(Sidekiq::Enc) && env.c == "aes-256-gcm"
  decipher = OpenSSL::Cipher.new(env.c).decrypt
  decipher.key = KEYS.fetch(env.v)
  decipher.iv = env.iv
  decipher.auth_tag = env.tag
  decipher.auth_data = ""
  plain = decipher.update(env.blob) + decipher.final
  [Marshal.load(plain), plain, env.v]
end
"""

# Secret bags as Ruby writes them, and the Python values kiq must pass to perform.
RUBY_BAGS = """[
  {"ssn" => "123-45-6789", "name" => "Zoë 🌍", "n" => 1},
  {name: "symbol keys", list: [1, [2, [3, {deep: true}]]], nested: {"a" => {"b" => nil}}},
  [2**100, -(2**70), 2**40, -5, 0, 1.5, -0.0, Float::INFINITY, -Float::INFINITY, 1.0e-7, nil, true, false],
  (s = "shared"; {"bin" => "\\xff\\x00".b, "sym" => :hello, "shared" => [s, s], "floats" => [2.5, 2.5],
                  "ascii" => "plain".encode("US-ASCII"), "sjis" => "x".encode("Shift_JIS"), 7 => "int key"}),
  "just a string",
  (h = Hash.new(0); h["with default"] = 1; h),
]"""
PY_BAGS: list[Any] = [
    {"ssn": "123-45-6789", "name": "Zoë 🌍", "n": 1},
    {"name": "symbol keys", "list": [1, [2, [3, {"deep": True}]]], "nested": {"a": {"b": None}}},
    [2**100, -(2**70), 2**40, -5, 0, 1.5, -0.0, math.inf, -math.inf, 1e-7, None, True, False],
    {"bin": b"\xff\x00", "sym": "hello", "shared": ["shared", "shared"], "floats": [2.5, 2.5], "ascii": "plain",
     "sjis": b"x", 7: "int key"},
    "just a string",
    {"with default": 1},
]


@pytest.fixture(scope="module", autouse=True)
def _ruby() -> None:
    require_ruby()


class SecretJob(Worker, name="SecretJob", encrypt=True, retry=3):
    seen: dict[str, list[Any]] = {}
    gate: threading.Event | None = None

    def perform(self, n: int, bag: Any) -> None:
        SecretJob.seen[self.jid] = [n, bag]
        if SecretJob.gate is not None:
            SecretJob.gate.wait(10)


@pytest.fixture(autouse=True)
def _reset() -> None:
    SecretJob.seen = {}
    SecretJob.gate = None


def redis_dump(r) -> str:
    """Every key and value in Redis, as text, to grep for plaintext."""
    out = []
    for key in r.keys("*"):
        kind = r.type(key)
        value: Any = {
            "string": lambda k: r.get(k),
            "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: sorted(r.smembers(k)),
            "zset": lambda k: r.zrange(k, 0, -1),
            "hash": lambda k: r.hgetall(k),
        }.get(kind, lambda k: "")(key)
        out.append(f"{key} {value}")
    return "\n".join(out)


def test_ruby_encrypted_jobs_run_with_equal_python_values(make_app, redis_url, r) -> None:
    out = ruby(RUBY_CRYPTO + f"""
        bags = {RUBY_BAGS}
        jids = bags.each_with_index.map do |bag, i|
          # Rotation: the first half sealed under version 1, the rest under version 2.
          Sidekiq::Client.push("class" => "SecretJob", "args" => [i, seal(bag, i < 3 ? 1 : 2)], "encrypt" => true)
        end
        nan = Sidekiq::Client.push("class" => "SecretJob", "args" => [99, seal({{"nan" => Float::NAN}}, 2)],
                                   "encrypt" => true)
        puts JSON.generate(jids + [nan])
        """, redis_url)
    jids = json.loads(out)
    app = make_app(workers=[SecretJob], encryption_keys=KEYS, encryption_version=2)
    app.start()
    wait_for(lambda: len(SecretJob.seen) == len(jids), timeout=15, what="every Ruby-encrypted job run by kiq")
    for i, expected in enumerate(PY_BAGS):
        n, bag = SecretJob.seen[jids[i]]
        assert n == i and bag == expected, i
        assert type(bag) is type(expected)
    assert math.copysign(1.0, SecretJob.seen[jids[2]][1][6]) == -1.0  # -0.0 kept its sign
    shared = SecretJob.seen[jids[3]][1]["shared"]
    assert shared[0] is shared[1], "one Ruby object linked twice is one Python object"
    assert math.isnan(SecretJob.seen[jids[-1]][1]["nan"])
    wait_for(lambda: r.get("stat:processed") == str(len(jids)), what="all processed")
    assert r.zcard("retry") == 0


def test_kiq_encrypted_jobs_decrypt_in_ruby_and_sidekiq_shows_encrypted_data(make_app, redis_url, r) -> None:
    bags: list[Any] = [
        {"ssn": "123-45-6789", "name": "Zoë 🌍", "big": 2**100, "neg": -(2**70), "mid": 2**40,
         "floats": [1.5, -0.0, math.inf, -math.inf, 1e-7, 0.1, 123456.789, 1e20], "bin": b"\xff\x00",
         "nested": [1, [2, {"a": None, "b": True, "c": False}]], "empty": {}, "list": []},
        "a plain string",
        [12, -3, 2**30, -(2**30) - 1, 2**62],
    ]
    app = make_app(encryption_keys=KEYS)
    jids = [app.enqueue(Job("RubySecretJob", [i, bag], queue="toruby", encrypt=True), sync=True)
            for i, bag in enumerate(bags)]
    app.enqueue(Job("RubySecretJob", [9, {"nan": math.nan}], queue="toruby", encrypt=True), sync=True)
    out = ruby(RUBY_CRYPTO + """
        expected = [
          {"ssn" => "123-45-6789", "name" => "Zoë 🌍", "big" => 2**100, "neg" => -(2**70), "mid" => 2**40,
           "floats" => [1.5, -0.0, Float::INFINITY, -Float::INFINITY, 1.0e-7, 0.1, 123456.789, 1.0e20],
           "bin" => "\\xff\\x00".b, "nested" => [1, [2, {"a" => nil, "b" => true, "c" => false}]],
           "empty" => {}, "list" => []},
          "a plain string",
          [12, -3, 2**30, -(2**30) - 1, 2**62],
        ]
        results = Sidekiq::Queue.new("toruby").to_a.reverse.map do |job|
          n = job.args.first
          bag, plain, version = unseal(job.args.last)
          ok = n == 9 ? bag["nan"].nan? : bag == expected[n]
          {"jid" => job.jid, "n" => n, "equal" => ok, "version" => version, "encrypt" => job["encrypt"],
           "display" => job.display_args.last, "same_bytes" => Marshal.dump(bag) == plain,
           "enc" => (bag.is_a?(Hash) ? bag.values.grep(String).map { |s| s.encoding.to_s } : [])}
        end
        puts JSON.generate(results)
        """, redis_url)
    results = json.loads(out)
    assert [x["n"] for x in results] == [0, 1, 2, 9]
    assert [x["jid"] for x in results[:3]] == jids
    for x in results:
        assert x["equal"] and x["version"] == 2 and x["encrypt"] is True, x
        assert x["display"] == "[encrypted data]", x
    # kiq's Marshal writer matches Ruby's byte for byte for these bags.
    assert all(x["same_bytes"] for x in results[:3]), results
    assert results[0]["enc"] == ["UTF-8", "UTF-8", "ASCII-8BIT"]


def test_sidekiq_web_ui_and_kiq_api_show_encrypted_data(make_app, r, web: Browser) -> None:  # noqa: F811
    @worker(name="Kiq::FailingSecret", encrypt=True, retry=3)
    def failing(n: int, bag: dict[str, str]) -> None:
        raise ValueError("failed")  # a message without the secret: kiq cannot scrub user messages

    app = make_app(workers=[failing], encryption_keys=KEYS, queues={"secret": 1})
    app.enqueue(Job("Kiq::WaitingSecret", [1, {"card": "4111-1111-1111-1111"}], queue="waiting", encrypt=True))
    app.enqueue(failing.new(2, {"card": "4111-1111-1111-1111"}).set(queue="secret"))
    app.start()
    wait_for(lambda: r.zcard("retry") == 1, what="the failed encrypted job in the retry set")
    for path in ["/queues/waiting", "/retries"]:
        status, page = web.get(path)
        assert status == 200
        assert "[encrypted data]" in page and "4111" not in page, path
    api = Api(app)
    queued = api.queue("waiting").jobs()[0]
    retried = api.retries.jobs()[0]
    for job in (queued, retried):
        assert job.encrypted and job.display_args[0] in (1, 2) and job.display_args[-1] == "[encrypted data]"
        assert _kiq.read_envelope(job.args[-1])[0] == "aes-256-gcm"
    assert retried.error_class == "ValueError"
    assert display_args({"args": [1, "x"], "encrypt": False}) == [1, "x"]
    assert display_args({"args": [1, "x"], "encrypt": "yes"}) == [1, "[encrypted data]"]


class Events(Reporter):
    def __init__(self) -> None:
        self.events: list[tuple[str, JobInfo, tuple[Any, ...]]] = []

    def handle_started(self, job: JobInfo) -> None:
        self.events.append(("started", job, ()))

    def handle_success(self, job: JobInfo, elapsed: float) -> None:
        self.events.append(("success", job, ()))

    def handle_failure(self, job: JobInfo, error: BaseException, traceback: Any) -> None:
        self.events.append(("failure", job, (repr(error),)))


def test_bad_ciphertexts_fail_through_the_retry_path_without_leaking(make_app, redis_url, r, caplog) -> None:
    out = ruby(RUBY_CRYPTO + """
        good = seal({"marker" => "TOPSECRET-good"}, 1)
        env = Marshal.load(Base64.strict_decode64(seal({"marker" => "TOPSECRET-tag"}, 1)))
        env.tag = (env.tag.getbyte(0) ^ 1).chr + env.tag[1..]
        bad = {
          "version" => seal({"marker" => "TOPSECRET-version"}, 3),
          "tag" => envelope(env.v, env.tag, env.iv, env.blob),
          "truncated" => seal({"marker" => "TOPSECRET-truncated"}, 1)[0...-3],
          "object" => seal(["TOPSECRET-object", Object.new], 1),
        }
        jids = bad.transform_values do |arg|
          Sidekiq::Client.push("class" => "SecretJob", "args" => [0, arg], "encrypt" => true, "retry" => 3)
        end
        jids["good"] = Sidekiq::Client.push("class" => "SecretJob", "args" => [1, good], "encrypt" => true)
        puts JSON.generate({"jids" => jids, "args" => bad})
        """, redis_url)
    pushed = json.loads(out)
    jids, sent = pushed["jids"], pushed["args"]
    events = Events()
    SecretJob.gate = threading.Event()
    with caplog.at_level(logging.DEBUG, logger="kiq"):
        app = make_app(workers=[SecretJob], encryption_keys=KEYS, extra_reporters=[events])
        app.start()
        wait_for(lambda: r.zcard("retry") == 4 and SecretJob.seen, what="4 failures and the good job running")
        running = redis_dump(r)  # while the good job runs: its work entry holds the ciphertext only
        SecretJob.gate.set()
        wait_for(lambda: len(events.events) == 2, what="the good job's reporter events")
        app.stop()
    assert SecretJob.seen == {jids["good"]: [1, {"marker": "TOPSECRET-good"}]}
    reasons = {
        "version": "no key for version 3 (this process has versions [1, 2])",
        "tag": "the GCM tag does not match",
        "truncated": "not strict Base64",
        "object": "type code 'o' (Object) is not supported",
    }
    retries = {j["jid"]: j for j in map(json.loads, r.zrange("retry", 0, -1))}
    for name, reason in reasons.items():
        job = retries[jids[name]]
        assert job["error_class"] == "kiq.errors.DecryptionError"
        assert reason in job["error_message"], (name, job["error_message"])
        assert job["args"][-1] == sent[name], "the retry payload keeps the ciphertext as it was"
        assert job["encrypt"] is True and job["retry_count"] == 0
    assert [e[1].args for e in events.events] == [[1, "[encrypted data]"]] * 2
    for where, text in [("redis", redis_dump(r)), ("redis while running", running), ("logs", caplog.text),
                        ("reporters", repr([(e[0], e[1].args, e[2]) for e in events.events]))]:
        assert "TOPSECRET" not in text, where
    assert "cannot decrypt" in caplog.text


def test_key_rotation_from_1_to_2(make_app, r) -> None:
    old = make_app(encryption_keys={1: K1})
    old.enqueue_bulk(SecretJob, [[i, {"v": 1, "i": i}] for i in range(3)], sync=True)
    new = make_app(encryption_keys={1: K1, 2: K2}, encryption_version=2)
    new.enqueue(SecretJob.new(3, {"v": 2}), sync=True)
    versions = sorted(_kiq.read_envelope(json.loads(p)["args"][-1])[3] for p in r.lrange("queue:default", 0, -1))
    assert versions == [1, 1, 1, 2]
    ivs = {_kiq.read_envelope(json.loads(p)["args"][-1])[2] for p in r.lrange("queue:default", 0, -1)}
    assert len(ivs) == 4, "a fresh IV for every job of a bulk push"
    # Only version 2 known: the version-1 jobs fail, clearly, and keep their ciphertext for a later run.
    only2 = make_app(workers=[SecretJob], encryption_keys={2: K2})
    only2.start()
    wait_for(lambda: r.zcard("retry") == 3 and len(SecretJob.seen) == 1, what="v1 jobs refused by a v2-only process")
    only2.stop()
    assert list(SecretJob.seen.values()) == [[3, {"v": 2}]]
    assert all("no key for version 1" in json.loads(p)["error_message"] for p in r.zrange("retry", 0, -1))
    # Keys from a callable (a secret manager), asked once per version, from the core's threads.
    asked: list[int] = []

    def lookup(version: int) -> bytes | None:
        asked.append(version)
        return KEYS.get(version)

    api = Api(new)
    for job in api.retries.jobs():
        api.retries.retry(job.jid)
    both = make_app(workers=[SecretJob], encryption_keys=lookup, encryption_version=2)
    both.start()
    wait_for(lambda: len(SecretJob.seen) == 4, what="the version-1 jobs after the rotation")
    assert sorted((v for _, v in SecretJob.seen.values() if v["v"] == 1), key=lambda v: v["i"]) == [
        {"v": 1, "i": 0}, {"v": 1, "i": 1}, {"v": 1, "i": 2}]
    assert sorted(asked) == [1, 2]


def test_options_and_errors(make_app, r) -> None:
    with pytest.raises(ConfigError, match="exactly 32 bytes"):
        Kiq(encryption_keys={1: b"short"})
    with pytest.raises(ConfigError, match="encryption_version 3 has no key"):
        Kiq(encryption_keys=KEYS, encryption_version=3)
    with pytest.raises(ConfigError, match="needs encryption_version"):
        Kiq(encryption_keys=lambda v: K1)
    with pytest.raises(ConfigError, match="must be bytes"):
        Kiq(encryption_keys={1: K1.hex()})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="needs encryption_keys"):
        Kiq(encryption_version=1)
    with pytest.raises(ConfigError, match="fresh IV"):
        class Both(Worker, encrypt=True, unique_for=60):  # noqa: F841 - rejected at definition
            pass
    with pytest.raises(ConfigError, match="fresh IV"):
        Job("X", [1, 2], encrypt=True, unique_for=60)
    app = make_app(encryption_keys=KEYS, buffer=False)
    assert repr(app._keyring) == "<Keyring active_version=2 versions=[1, 2]>"
    for shown in (repr(app), str(vars(app))):
        assert K1.hex() not in shown and repr(K1) not in shown and repr(K2) not in shown
    with pytest.raises(CodecError, match="at least 2 arguments"):
        app.enqueue(Job("X", [{"only": "bag"}], encrypt=True))
    with pytest.raises(ConfigError, match="needs encryption keys"):
        make_app().enqueue(Job("X", [1, 2], encrypt=True))
    with pytest.raises(CodecError, match=r"args\[1\]\['k'\] has type object"):
        app.enqueue(Job("X", [1, {"k": object()}], encrypt=True))
    with pytest.raises(CodecError, match="set by kiq"):
        app.enqueue(Job("X", [1, 2], options={"encrypt": True}))
    # The double-encryption guard: an argument that already is an envelope is left alone;
    # one that merely looks like Base64 is encrypted.
    sealed = app._keyring.encrypt({"a": 1})
    app.enqueue(Job("X", [1, sealed], encrypt=True))
    app.enqueue(Job("X", [2, "UGFzc3cwcmQ="], encrypt=True))
    app.enqueue_all([SecretJob.new(3, {"a": 3}), Job("X", [4, "clear"])])
    jobs = {json.loads(p)["args"][0]: json.loads(p) for p in r.lrange("queue:default", 0, -1)}
    assert jobs[1]["args"][1] == sealed and jobs[1]["encrypt"] is True
    assert jobs[2]["args"][1] != "UGFzc3cwcmQ=" and app._keyring.decrypt(jobs[2]["args"][1]) == "UGFzc3cwcmQ="
    assert app._keyring.decrypt(jobs[3]["args"][1]) == {"a": 3} and list(jobs[3])[:3] == ["retry", "queue", "encrypt"]
    assert "encrypt" not in jobs[4] and jobs[4]["args"] == [4, "clear"]
    with pytest.raises(DecryptionError, match="Base64"):
        app._keyring.decrypt("not base64!")


def test_issue_3368_ciphertext_parses_structurally() -> None:
    text = (HERE / "fixtures" / "sidekiq_ent_issue_3368.txt").read_text().strip()
    cipher, tag, iv, version, blob = _kiq.read_envelope(text)
    assert (cipher, len(tag), len(iv), version, len(blob)) == ("aes-256-gcm", 16, 12, 1, 33)
    with pytest.raises(DecryptionError, match="tag does not match"):
        _kiq.Keyring(KEYS, 2).decrypt(text)  # its key is not public


def test_sandbox_records_plaintext_and_marks_encrypted() -> None:
    app = Kiq(test_mode="sandbox", workers=[SecretJob])
    app.enqueue(SecretJob.new(1, {"card": "4111"}))
    job = assert_enqueued(app, SecretJob, args=[1, {"card": "4111"}])
    assert job.encrypted and job.item["encrypt"] is True and "4111" not in job.payload
    assert job.args[-1] == {"card": "4111"}
    assert drain(app) == 1
    assert list(SecretJob.seen.values()) == [[1, {"card": "4111"}]]
    assert enqueued(app) == []
    with pytest.raises(CodecError, match="at least 2"):
        app.enqueue(Job("X", ["bag"], encrypt=True))


def test_periodic_encrypted_jobs_are_sealed_afresh_each_time(make_app, r) -> None:
    t0 = 1_800_000_000 - 1_800_000_000 % 3600
    app = make_app(queues={"unused": 1}, leader_ttl=1, encryption_keys=KEYS, periodic_clock=(t0, time.time(), 60.0),
                   periodics=[("* * * * *", "Tick", {"args": [1, {"k": "v"}], "encrypt": True})])
    app.start()
    wait_for(lambda: r.llen("queue:default") >= 2, timeout=15, what="two periodic enqueues")
    app.stop()
    args = [json.loads(p)["args"] for p in r.lrange("queue:default", 0, 1)]
    assert args[0][1] != args[1][1]
    assert [app._keyring.decrypt(a[1]) for a in args] == [{"k": "v"}, {"k": "v"}]
    with pytest.raises(ConfigError, match="differ only in their encrypted last argument"):
        make_app(encryption_keys=KEYS, periodics=[("* * * * *", "Tick", {"args": [1, {"k": v}], "encrypt": True})
                                                 for v in "ab"]).start()

