-- throttle_refresh.lua: extend the holds of the jobs a process is running
-- under a concurrency throttle, so a job that runs longer than the lock
-- timeout keeps its room; a process that dies stops refreshing, and its holds
-- expire after the lock timeout. A hold that expired already is not brought
-- back (ZADD XX). Keys of the wrong type are skipped.
--
-- KEYS[i]      kiq:throttle|<class>|<key>   ZSET hold token -> expiry ms, of hold i
-- ARGV[2i-1]   hold i's token
-- ARGV[2i]     hold i's lock ms
--
-- Returns the number of holds extended.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local extended = 0
for i = 1, #KEYS do
  local ty = redis.call('TYPE', KEYS[i])['ok']
  if ty == 'zset' then
    local lock = tonumber(ARGV[2 * i])
    extended = extended + redis.call('ZADD', KEYS[i], 'XX', 'CH', now + lock, ARGV[2 * i - 1])
    redis.call('PEXPIRE', KEYS[i], lock)
  end
end
return extended
