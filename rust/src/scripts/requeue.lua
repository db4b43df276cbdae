-- requeue.lua: hand every job of an in-progress list back to its queue, so
-- they are the next jobs any process takes, oldest first (as Sidekiq's
-- shutdown RPUSHes unfinished work).
--
-- KEYS[1]  in-progress list     LIST, newest job at the left end.
-- KEYS[2]  queue:<name>         LIST the jobs return to (at its right end).
-- KEYS[3]  queues               SET of queue names; the name is re-added.
-- ARGV[1]  the queue's name.
--
-- Returns how many jobs were moved.
for i, want in ipairs({'list', 'list', 'set'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
if moved > 0 then
  redis.call('SADD', KEYS[3], ARGV[1])
end
return moved
