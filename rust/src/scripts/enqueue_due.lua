-- enqueue_due.lua: move due jobs of the schedule or retry set to their queues.
-- The caller read the members and prepared each new payload (with a fresh
-- enqueued_at); a member another process already moved is skipped, so a job
-- is moved exactly once and is never outside both places.
--
-- KEYS[1]    the sorted set (schedule or retry).
-- KEYS[2]    queues              SET of queue names.
-- KEYS[2+i]  queue:<name> of job i.
-- ARGV[3i-2] job i's member as stored in KEYS[1].
-- ARGV[3i-1] job i's payload to push.
-- ARGV[3i]   job i's queue name.
--
-- Returns how many jobs were moved.
local moved = 0
for i = 1, #KEYS - 2 do
  local at = 3 * i
  if redis.call('ZREM', KEYS[1], ARGV[at - 2]) == 1 then
    redis.call('SADD', KEYS[2], ARGV[at])
    redis.call('LPUSH', KEYS[2 + i], ARGV[at - 1])
    moved = moved + 1
  end
end
return moved
