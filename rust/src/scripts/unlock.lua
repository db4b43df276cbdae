-- unlock.lua: release unique-job locks, each only if it is still held by
-- the job releasing it (a lock that expired and was taken by a newer job of
-- the same arguments stays).
--
-- KEYS[i]  kiq:unique:<token>   STRING, the jid holding the lock.
-- ARGV[i]  the jid releasing KEYS[i].
--
-- Returns how many locks were released.
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
