-- batch_invalidate.lua: mark a batch invalid (Pro's invalidate_all), if it
-- still exists: its jobs that have not started are skipped from then on
-- (each process sees the mark within a second), and count as done.
--
-- KEYS[1]  kiq:batch|<bid>   HASH
-- ARGV[1]  now, epoch seconds
--
-- Returns 1 when marked, 0 when the batch is gone (expired or unknown).
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return 0 end
if t ~= 'hash' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', not a hash')
end
redis.call('HSET', KEYS[1], 'invalid', ARGV[1])
return 1
