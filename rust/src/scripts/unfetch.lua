-- unfetch.lua: hand jobs this process fetched but no thread started back to
-- their queue (their lane's jobs turned slow: another process may start them
-- sooner). Each job is taken off the in-progress list and pushed on the
-- queue's right end, the next to be taken, the oldest last so it is taken
-- first. A job not found in the list (it was recovered meanwhile) is not
-- pushed: a call repeated after a lost reply moves nothing twice.
--
-- KEYS[1]  in-progress list     LIST of this process's jobs of the queue, newest at the left end.
-- KEYS[2]  queue:<name>         LIST the jobs return to (at its right end).
-- KEYS[3]  queues               SET of queue names; the name is re-added.
-- ARGV[1]  the queue's name.
-- ARGV[2..] the jobs as in the list, oldest first.
--
-- Returns how many jobs were moved.
for i, want in ipairs({'list', 'list', 'set'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local moved = 0
for i = #ARGV, 2, -1 do
  -- The newest jobs are at the list's left end, where LREM with a count of 1 starts.
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('SADD', KEYS[3], ARGV[1])
end
return moved
