-- limit_release.lua: give back a concurrent limiter's slot, and wake as many
-- waiters as there are (one entry each on the wake list, which they block on
-- with BLPOP), so a freed slot is taken at once instead of polled for.
-- Key types are checked before any write: KEYS[2] and KEYS[3] are read first
-- by commands that fail on the wrong type, and KEYS[1]'s first use is the
-- first write (which fails, changing nothing, on the wrong type).
--
-- KEYS[1]  kiq:limiter|concurrent|<name>          ZSET token -> lock expiry ms
-- KEYS[2]  kiq:limiter|concurrent|<name>|waiting  ZSET token -> deadline ms
-- KEYS[3]  kiq:limiter|concurrent|<name>|wake     LIST of wake-ups
-- ARGV[1]  the holder's token
--
-- Returns 1 if the token held a slot, 0 if it had expired (lock_timeout).

local waiters = redis.call('ZCARD', KEYS[2]) > 0
if waiters then redis.call('LLEN', KEYS[3]) end
local held = redis.call('ZREM', KEYS[1], ARGV[1])
if waiters then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  local waiting = redis.call('ZCARD', KEYS[2])
  if waiting > 0 then
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('LTRIM', KEYS[3], 0, waiting - 1)
    local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', KEYS[3], math.max(1, tonumber(last[2]) - now))
  end
end
return held
