-- unique_push.lua: push a unique job only if its lock is free, taking the
-- lock in the same atomic step, so of many identical enqueues exactly one
-- reaches Redis. Sent again after a lost reply, it finds the lock held by
-- the job itself and pushes nothing twice. Key types are checked before
-- anything is written.
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
-- Returns {1} when pushed (now or by an earlier call of the same job), {0,
-- holder jid} when another job holds the lock; a WRONGTYPE error naming the
-- key (nothing written) when a key holds the wrong kind of value.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return {1}
elseif holder then
  return {0, holder}
end
local function expect(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local now = ARGV[4] == ''
local bad = expect(KEYS[2], now and 'list' or 'zset') or (now and expect(KEYS[3], 'set'))
if bad then
  return bad
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local pushed
if now then
  pushed = redis.pcall('LPUSH', KEYS[2], ARGV[3])
else
  pushed = redis.pcall('ZADD', KEYS[2], ARGV[4], ARGV[3])
end
if type(pushed) == 'table' and pushed['err'] then
  -- Refused (an ACL, say): the lock must not outlive a job that is not there.
  redis.call('DEL', KEYS[1])
  return pushed
end
if now then
  redis.pcall('SADD', KEYS[3], ARGV[5])
end
return {1}
