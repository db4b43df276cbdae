-- unique_push.lua: push a unique job only if its lock is free, taking the
-- lock in the same atomic step, so of many identical enqueues exactly one
-- reaches Redis.
--
-- KEYS[1]  kiq:unique:<token>   STRING, the jid holding the lock, with a TTL.
-- KEYS[2]  queue:<name>          LIST (immediate job) or schedule ZSET (scheduled job).
-- KEYS[3]  queues                SET of queue names (immediate jobs only).
-- ARGV[1]  the job's jid.
-- ARGV[2]  the lock's lifetime in milliseconds.
-- ARGV[3]  the payload.
-- ARGV[4]  the run time (epoch seconds) of a scheduled job, or "" to push now.
-- ARGV[5]  the queue's name.
--
-- Returns {1} when pushed, {0, holder jid} when another job holds the lock.
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('GET', KEYS[1])}
end
if ARGV[4] == '' then
  redis.call('SADD', KEYS[3], ARGV[5])
  redis.call('LPUSH', KEYS[2], ARGV[3])
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
return {1}
