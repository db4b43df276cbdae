-- fetch.lua: take up to ARGV[1] jobs from a queue into this process's
-- in-progress list, in one atomic step, so a fetched job is always in one of
-- the two lists.
--
-- KEYS[1]  queue:<name>         LIST of job payloads; Sidekiq pushes on the left,
--                               so the oldest job is at the right end.
-- KEYS[2]  in-progress list     LIST of this process's unacknowledged jobs for
--                               that queue; jobs are pushed on its left end.
-- ARGV[1]  the most jobs to take (>= 1).
--
-- Returns the jobs taken, oldest first (empty when the queue is empty).
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if not jobs then
  return {}
end
redis.call('LPUSH', KEYS[2], unpack(jobs))
return jobs
