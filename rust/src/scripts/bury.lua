-- bury.lua: move one member of a sorted set to the dead set, when it is still
-- there (used for unreadable schedule/retry entries, which Sidekiq would lose).
--
-- KEYS[1]  the source sorted set (schedule or retry).
-- KEYS[2]  dead                 ZSET, score = time of death in epoch seconds.
-- ARGV[1]  the member.
-- ARGV[2]  now, epoch seconds.
-- ARGV[3]  oldest score kept in dead (now - dead_timeout).
-- ARGV[4]  dead_limit: ranks 0 .. -dead_limit are removed, Sidekiq's exact trim
--          (so the set settles at dead_limit - 1 entries, as Sidekiq's does).
--
-- Returns 1 when the member was moved, 0 when it was already gone.
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'zset' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', not a zset')
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
kiq_trim_dead(KEYS[2], ARGV[3], ARGV[4])
return 1
