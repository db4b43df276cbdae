-- throttle_release.lua: the end of jobs admitted under a concurrency
-- throttle (`throttle.rs`). Each gives its hold back; then, while its key has
-- room, the earliest jobs parked for that key and queue move from `schedule`
-- to their queue, where new jobs join it (never ahead of the jobs waiting
-- there: a throttled class does not overtake the others), so a parked job
-- waits for the job of its key ahead of it, not for its fallback time. A parked job the scheduler
-- moved already is skipped (it is no longer in `schedule`). Key types are
-- checked first; a release whose keys hold the wrong type is skipped (its
-- hold expires by itself, its parked jobs return at their time).
--
-- KEYS[1]     schedule                          ZSET
-- KEYS[2]     queues                            SET of queue names
-- KEYS[3i]    kiq:throttle|<class>|<key>        ZSET hold token -> expiry ms   (release i, from 1)
-- KEYS[3i+1]  kiq:parked|<queue>|<class>|<key>  ZSET member of schedule -> its score
-- KEYS[3i+2]  queue:<name>                      LIST
-- ARGV[3i-2], ARGV[3i-1], ARGV[3i]   release i: hold token, concurrency, queue name
--
-- Returns {parked jobs moved back, releases skipped for a key of the wrong type}.

local function is(key, want)
  local ty = redis.call('TYPE', key)['ok']
  return ty == 'none' or ty == want
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local shared = is(KEYS[1], 'zset') and is(KEYS[2], 'set')
local moved, skipped = 0, 0
for i = 1, (#KEYS - 2) / 3 do
  local holds, parked, queue = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  if shared and is(holds, 'zset') and is(parked, 'zset') and is(queue, 'list') then
    redis.call('ZREM', holds, ARGV[3 * i - 2])
    redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
    local free = tonumber(ARGV[3 * i - 1]) - redis.call('ZCARD', holds)
    while free > 0 do
      local p = redis.call('ZPOPMIN', parked)
      if #p == 0 then break end
      if redis.call('ZREM', KEYS[1], p[1]) == 1 then
        redis.call('LPUSH', queue, p[1])
        redis.call('SADD', KEYS[2], ARGV[3 * i])
        free, moved = free - 1, moved + 1
      end
    end
  else
    skipped = skipped + 1
  end
end
return {moved, skipped}
