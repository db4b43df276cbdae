"""The Redis ACL kiq needs, for ``ACL SETUSER`` (Redis 6.2+).

Three roles; each list includes the commands kiq's Lua scripts run (Redis
checks those against the ACL too, so a script-only command missing here
fails the script at run time):

- ``producer``: enqueueing (the push buffer, ``sync``, unique jobs) and rate
  limiters (``app.limiter``, which a web request may use too);
- ``worker``: a ``kiq run`` process, which may also become the leader and then
  runs periodic jobs and recovers dead processes' jobs (``LRANGE``,
  ``SCAN``...). It includes ``producer`` (jobs enqueue jobs);
- ``admin``: :mod:`kiq.api`, the ``kiq`` CLI's listings and actions, and the
  web dashboard.

Limiter and throttle scripts read Redis's clock (``TIME``), and a concurrent
limiter's waiters block in ``BLPOP``. Keys: kiq reads and writes Sidekiq's own keys (``queue:*``, ``schedule``,
``retry``, ``dead``, ``processes``, ``stat:*``, the process hashes named by
identity, the metrics hashes named by class) and its own ``kiq:*`` keys, so
the key pattern is ``~*``; with a namespace (``redis-namespace``), ``~ns:*``.
No pub/sub channels are used. ``python -m kiq acl`` prints the ``ACL SETUSER``
line. The test ``tests/test_acl.py`` runs every role's work under exactly
these lists and checks that Redis denied nothing (``ACL LOG``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ADMIN", "COMMANDS", "LIMITER", "PRODUCER", "WORKER", "rules"]

#: Rate limiters (limit_acquire.lua, limit_release.lua, waiting and giving up).
LIMITER: tuple[str, ...] = (
    "evalsha", "script|load", "time", "type", "zremrangebyscore", "zscore", "zcard", "zadd", "zrem", "zrange",
    "pexpire", "hmget", "hset", "lpush", "ltrim", "blpop",
)

PRODUCER: tuple[str, ...] = LIMITER + (
    # inside push.lua and unique_push.lua; a batch's first send: MULTI, SADD, LPUSH, EVAL push_mark.lua, EXEC
    "type", "hget", "hset", "hdel", "pexpire", "lpush", "zadd", "sadd", "get", "set", "del", "multi", "exec", "eval",
    # batches: batch_stage.lua, batch_commit.lua (with batch_lib.lua), moving fired callbacks
    # (enqueue_due.lua), reopening, Batch.valid, dropping a raised block's staged jobs
    "rpush", "lrange", "ltrim", "exists", "hexists", "hmget", "hincrby", "hsetnx", "hlen", "hscan", "pttl",
    "expire", "zscore", "zrem", "zremrangebyscore", "sismember", "unlink",
)

WORKER: tuple[str, ...] = PRODUCER + (
    "ping", "info", "client|id", "client|unblock", "multi", "exec",
    # fetching, results, the scheduler, heartbeats, metrics, cancel checks
    "blmove", "rpop", "rpush", "lrem", "lmove", "zrem", "zscore", "zrange", "zremrangebyscore", "zremrangebyrank",
    "incrby", "expire", "hincrby", "hsetnx", "hexists", "bitfield", "unlink", "scard", "smembers",
    # the leader: orphan recovery and pruning dead processes
    "scan", "exists", "lrange", "srem",
    # throttles (throttle_*.lua) and the limiters' state in /metrics
    "zpopmin", "zrevrange", "zcount",
)

ADMIN: tuple[str, ...] = (
    "evalsha", "script|load", "multi", "exec", "ping", "info",
    # batches: the listing, one batch's status, invalidate (batch_invalidate.lua), and a
    # kill's death (kill_many.lua with batch_lib.lua)
    "hlen", "ttl", "hexists", "sismember", "pttl", "hscan", "hincrby",
    "get", "mget", "type", "llen", "lindex", "lrange", "lrem", "lpush", "rpush", "zcard", "zrange", "zrevrange",
    "zscan", "zscore", "zadd", "zrem", "zremrangebyscore", "zremrangebyrank", "smembers", "srem", "sadd", "scard",
    "hget", "hgetall", "hmget", "hset", "hsetnx", "expire", "pexpire", "exists", "unlink", "del", "scan",
    # the limiters' state (kiq.api.Api.limiters)
    "time", "zrevrange", "zcount",
)

#: Every command of every role.
COMMANDS: tuple[str, ...] = tuple(sorted(set(PRODUCER) | set(WORKER) | set(ADMIN)))

_ROLES = {"producer": PRODUCER, "worker": WORKER, "admin": ADMIN}


def rules(password: str, roles: Iterable[str] = ("worker", "admin"), keys: str = "~*") -> list[str]:
    """The ``ACL SETUSER <name>`` arguments for a user of these roles."""
    commands: set[str] = set()
    for role in roles:
        if role not in _ROLES:
            raise ValueError(f"unknown kiq ACL role {role!r}: use producer, worker or admin")
        commands.update(_ROLES[role])
    return ["on", f">{password}", "resetkeys", keys, "resetchannels", "-@all", *(f"+{c}" for c in sorted(commands))]
