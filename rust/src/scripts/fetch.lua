-- fetch.lua: take up to ARGV[1] jobs from a queue into this process's
-- in-progress list, in one atomic step, so a fetched job is always in one of
-- the two lists. The batch is also kept, under the caller's token, until the
-- next fetch: if the reply is lost (a dropped connection, a timeout), the
-- caller reads it back instead of stranding those jobs.
--
-- KEYS[1]  queue:<name>         LIST of job payloads; Sidekiq pushes on the left,
--                               so the oldest job is at the right end.
-- KEYS[2]  in-progress list     LIST of this process's unacknowledged jobs for
--                               that queue; jobs are pushed on its left end.
-- KEYS[3]  last batch           LIST, the jobs this call returned (oldest first).
-- KEYS[4]  last batch token     STRING, the token of the call that wrote KEYS[3].
-- ARGV[1]  the most jobs to take (>= 1).
-- ARGV[2]  this call's token (unique per fetcher and call).
--
-- Returns the jobs taken, oldest first (empty when the queue is empty), or
-- a WRONGTYPE error, before anything is taken, when the in-progress list is
-- not a list: a script's writes are not undone when it fails, so popping
-- first would drop the jobs the LPUSH then refused.
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'list' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', not a list (the jobs stay in ' .. KEYS[1] .. ')')
end
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], ARGV[2])
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if not jobs then
  return {}
end
redis.call('LPUSH', KEYS[2], unpack(jobs))
redis.call('RPUSH', KEYS[3], unpack(jobs))
return jobs
