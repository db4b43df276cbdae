-- reelect.lua: extend this process's leadership, if it still holds it.
--
-- KEYS[1]  kiq:leader     STRING, the leader's identity, with a TTL.
-- ARGV[1]  this process's identity.
-- ARGV[2]  the lease, in milliseconds.
--
-- Returns 1 when renewed, 0 when another process (or nobody) leads.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
