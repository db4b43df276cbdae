-- resign.lua: give up leadership at a stop, if this process holds it.
--
-- KEYS[1]  kiq:leader     STRING, the leader's identity.
-- ARGV[1]  this process's identity.
--
-- Returns 1 when this process led and the key is gone, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
