-- fetch.lua: take up to ARGV[1] jobs from a capsule's queues, in the order
-- given, each job moved into its queue's in-progress list of this process in
-- one atomic step, so a fetched job is always in one of the two lists. The
-- batch is also kept, under the caller's token, until the next fetch: if the
-- reply is lost (a dropped connection, a timeout), the caller reads it back
-- instead of stranding those jobs.
--
-- KEYS[1]      last batch              LIST: per queue that gave jobs, its tag,
--                                      the count, then the jobs (oldest first).
-- KEYS[2]      last batch token        STRING, the token of the call that wrote KEYS[1].
-- then per queue i (1..N), in the order to take from:
-- KEYS[1+2i]   queue:<name>            LIST of job payloads; Sidekiq pushes on the
--                                      left, so the oldest job is at the right end.
-- KEYS[2+2i]   in-progress list        LIST of this process's unacknowledged jobs
--                                      of that queue; jobs are pushed on its left end.
-- ARGV[1]  the most jobs to take (>= 1).
-- ARGV[2]  this call's token (unique per fetcher and call).
-- ARGV[3]  milliseconds KEYS[1] and KEYS[2] live (they only matter right after the call).
-- ARGV[3+i]  queue i's tag (the caller's number for it), returned and kept with its jobs.
--
-- Returns, per queue that gave jobs, {tag, job, job, ...} (oldest first;
-- empty when every queue is empty), or a WRONGTYPE error when a queue's
-- in-progress list is not a list: the jobs popped from that queue are put
-- back where they were first (the type is checked only once a queue gave
-- jobs, so an empty queue costs one RPOP); jobs taken from earlier queues
-- are in KEYS[1], for the caller to read back.
local want = tonumber(ARGV[1])
local ttl = ARGV[3]
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
local out = {}
local n = (#KEYS - 2) / 2
for i = 1, n do
  if want <= 0 then
    break
  end
  local queue, wip = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local jobs = redis.call('RPOP', queue, want)
  if jobs then
    local t = redis.call('TYPE', wip)['ok']
    if t ~= 'none' and t ~= 'list' then
      -- Put back as they were (the oldest at the right end) before refusing.
      local back = {}
      for k = #jobs, 1, -1 do
        back[#back + 1] = jobs[k]
      end
      redis.call('RPUSH', queue, unpack(back))
      return redis.error_reply('WRONGTYPE ' .. wip .. ' holds a ' .. t .. ', not a list (the jobs stay in ' .. queue .. ')')
    end
    redis.call('LPUSH', wip, unpack(jobs))
    redis.call('RPUSH', KEYS[1], ARGV[3 + i], #jobs, unpack(jobs))
    want = want - #jobs
    table.insert(jobs, 1, ARGV[3 + i])
    out[#out + 1] = jobs
  end
end
if #out > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return out
