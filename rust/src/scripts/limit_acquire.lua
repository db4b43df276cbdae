-- limit_acquire.lua: one attempt to take room in a rate limiter (`limits.rs`),
-- in one round trip. Time is Redis's own clock (TIME), so processes on every
-- host count against one clock. Key types are checked before any write: each
-- key is first read by a command that fails on a key of the wrong type
-- (ZCARD, ZSCORE, HMGET), before anything is written.
--
-- KEYS[1]  kiq:limiter|<kind>|<name>          the state: ZSET for concurrent (token -> lock expiry ms)
--                                             and window (member -> time ms); HASH for bucket
--                                             (start, n, last) and leaky/points (level, at, last)
-- KEYS[2]  kiq:limiter|<kind>|<name>|waiting  ZSET token -> deadline ms of the callers waiting for room
-- KEYS[3]  kiq:limiters                       ZSET registry member -> last use ms
-- ARGV[1]  kind: concurrent, bucket, window, leaky or points
-- ARGV[2]  the caller's token (the same for every attempt of one acquire)
-- ARGV[3]  capacity (size, count or points)
-- ARGV[4]  interval ms (concurrent: lock timeout; bucket: calendar period;
--          window: its length; leaky, points: time a full bucket takes to drain)
-- ARGV[5]  points this acquire takes
-- ARGV[6]  ms the caller waits if refused (> 0: it is registered as a waiter until then)
-- ARGV[7]  the registry member (kind|name|capacity|interval_ms)
-- ARGV[8]  ms the registry keeps a limiter nobody used
-- ARGV[9]  ms between two writes of a limiter's last use to the registry
-- ARGV[10] 1 when this attempt is sent again after a failure (it may have been applied)
--
-- Returns {granted (1 or 0), now ms, ms until room may come back, in use now}.

local kind, token = ARGV[1], ARGV[2]
local again = ARGV[10] == '1'
-- The reads that check KEYS[2] and KEYS[3] (KEYS[1] is read first below).
local waiting, registered = redis.call('ZCARD', KEYS[2]), false
local seen = redis.call('ZSCORE', KEYS[3], ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap, interval = tonumber(ARGV[3]), tonumber(ARGV[4])
local points, wait = tonumber(ARGV[5]), tonumber(ARGV[6])

-- Waiters, if any (most acquires find none and skip this).
if waiting > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  waiting = redis.call('ZCARD', KEYS[2])
  registered = redis.call('ZSCORE', KEYS[2], token)
end
local granted, retry, used = false, 0, 0

if kind == 'concurrent' then
  used = redis.call('ZCARD', KEYS[1])
  if used > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    used = redis.call('ZCARD', KEYS[1])
  end
  if again and redis.call('ZSCORE', KEYS[1], token) then
    granted = true -- an attempt sent again after its reply was lost
  else
    local free = cap - used
    -- Free slots go first to the callers already waiting for one.
    if free > 0 and (registered or free > waiting) then
      redis.call('ZADD', KEYS[1], now + interval, token)
      redis.call('PEXPIRE', KEYS[1], interval)
      granted, used = true, used + 1
    elseif free > 0 then
      retry = 50
    else
      local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
      retry = tonumber(first[2]) - now
    end
  end
elseif kind == 'bucket' then
  local start = now - now % interval
  local s = redis.call('HMGET', KEYS[1], 'start', 'n', 'last')
  local same = tonumber(s[1]) == start
  used = same and tonumber(s[2]) or 0
  if same and s[3] == token then
    granted = true
  elseif used + points <= cap then
    used = used + points
    redis.call('HSET', KEYS[1], 'start', start, 'n', used, 'last', token)
    redis.call('PEXPIRE', KEYS[1], start + interval - now)
    granted = true
  else
    retry = start + interval - now
  end
elseif kind == 'window' then
  -- Members older than the window leave it: at most cap in any interval.
  if redis.call('ZCARD', KEYS[1]) > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - interval)
  end
  used = redis.call('ZCARD', KEYS[1])
  if again and redis.call('ZSCORE', KEYS[1], token .. ':1') then
    granted = true
  elseif used + points <= cap then
    for i = 1, points do
      redis.call('ZADD', KEYS[1], now, token .. ':' .. i)
    end
    redis.call('PEXPIRE', KEYS[1], interval)
    granted, used = true, used + points
  else
    local need = used + points - cap
    local oldest = redis.call('ZRANGE', KEYS[1], need - 1, need - 1, 'WITHSCORES')
    retry = tonumber(oldest[2]) + interval - now
  end
else -- leaky and points: a bucket of cap that drains cap per interval
  local s = redis.call('HMGET', KEYS[1], 'level', 'at', 'last')
  local level = tonumber(s[1]) or 0
  local at = tonumber(s[2]) or now
  level = math.max(0, level - (now - at) * cap / interval)
  if s[3] == token then
    granted = true
  elseif level + points <= cap then
    level = level + points
    redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'at', now, 'last', token)
    redis.call('PEXPIRE', KEYS[1], math.ceil(level * interval / cap) + 1)
    granted = true
  else
    retry = math.ceil((level + points - cap) * interval / cap)
  end
  used = math.ceil(level)
end

if granted then
  if registered then redis.call('ZREM', KEYS[2], token) end
elseif wait > 0 then
  redis.call('ZADD', KEYS[2], now + wait, token)
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[2], math.max(1, tonumber(last[2]) - now))
end
-- The registry learns of the use at most every ARGV[9] ms (it is for display).
if not seen or now - tonumber(seen) >= tonumber(ARGV[9]) then
  redis.call('ZADD', KEYS[3], now, ARGV[7])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[8]))
end
return {granted and 1 or 0, now, math.max(1, retry), used}
