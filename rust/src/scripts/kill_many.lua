-- kill_many.lua: move members of a sorted set to the dead set (the Web UI's
-- "Kill" on selected jobs), then trim the dead set once, as Sidekiq's
-- DeadSet#kill trims after each ZADD. A member already gone is skipped.
--
-- KEYS[1]  the source sorted set (retry or schedule).
-- KEYS[2]  dead                 ZSET, score = time of death in epoch seconds.
-- ARGV[1]  now, epoch seconds.
-- ARGV[2]  oldest score kept in dead (now - dead_timeout).
-- ARGV[3]  dead_limit: ranks 0 .. -dead_limit are removed (Sidekiq's trim).
-- ARGV[4..] the members.
--
-- Returns how many members were moved.
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'zset' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', not a zset')
end
local moved = 0
for i = 4, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]))
end
return moved
