-- throttle_release.lua: the end of jobs admitted under a concurrency
-- throttle (`throttle.rs`). They give their holds back; then, while their key
-- has room, the earliest jobs parked for that key and queue move from
-- `schedule` to their queue, where new jobs join it (never ahead of the jobs
-- waiting there: a throttled class does not overtake the others), so a parked
-- job waits for the job of its key ahead of it, not for its fallback time. A
-- parked job the scheduler moved already is skipped (it is no longer in
-- `schedule`). Key types are checked before any write; a group whose keys
-- hold the wrong type is skipped (its holds expire by themselves, its parked
-- jobs return at their time).
--
-- KEYS[1]     schedule                          ZSET
-- KEYS[2]     queues                            SET of queue names
-- KEYS[3g]    kiq:throttle|<class>|<key>        ZSET hold token -> expiry ms   (group g, from 1: one key and queue)
-- KEYS[3g+1]  kiq:parked|<queue>|<class>|<key>  ZSET member of schedule -> its score
-- KEYS[3g+2]  queue:<name>                      LIST
-- ARGV, per group in order: concurrency, queue name, number of holds H, then H hold tokens
--
-- Returns {parked jobs moved back, holds not given back for a key of the wrong type}.

local function is(key, want)
  local ty = redis.call('TYPE', key)['ok']
  return ty == 'none' or ty == want
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local shared = is(KEYS[1], 'zset') and is(KEYS[2], 'set')
local moved, skipped = 0, 0
local a = 1
for g = 1, (#KEYS - 2) / 3 do
  local holds, parked, queue = KEYS[3 * g], KEYS[3 * g + 1], KEYS[3 * g + 2]
  local conc, name, n = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
  local tokens = a + 3
  a = tokens + n
  if n > 0 and shared and is(holds, 'zset') and is(parked, 'zset') and is(queue, 'list') then
    -- In slices small enough for Lua's stack.
    for from = tokens, tokens + n - 1, 1000 do
      redis.call('ZREM', holds, unpack(ARGV, from, math.min(from + 999, tokens + n - 1)))
    end
    if redis.call('ZCARD', holds) > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end
    local free = conc - redis.call('ZCARD', holds)
    local waiting = redis.call('ZCARD', parked)
    while free > 0 and waiting > 0 do
      local p = redis.call('ZPOPMIN', parked)
      waiting = waiting - 1
      if redis.call('ZREM', KEYS[1], p[1]) == 1 then
        redis.call('LPUSH', queue, p[1])
        redis.call('SADD', KEYS[2], name)
        free, moved = free - 1, moved + 1
      end
    end
  else
    skipped = skipped + n
  end
end
return {moved, skipped}
