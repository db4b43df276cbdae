-- fail_orphan.lua: fail one job a dead process held, if it is still in the
-- process's in-progress list: the job its swarm parent killed the process
-- for, because it ran past its hard_timeout. The job takes the retry path
-- as a job that raised would (retry set, dead set or dropped, decided by
-- the caller) and counts as processed and failed; taking it off the list
-- and writing its fate are one atomic step, so a recovery run twice (or
-- racing the leader's) never writes it twice. A batch member failed this
-- way counts for its batch as a failure or a death in the same step
-- (batch_lib.lua, prepended), as settle.lua counts a job that raised.
--
-- KEYS[1]  kiq:wip|<identity>|<queue>   LIST, the dead process's in-progress jobs.
-- KEYS[2]  retry                        ZSET, score = when the retry runs.
-- KEYS[3]  dead                         ZSET, score = time of death.
-- KEYS[4]  stat:processed               STRING counter
-- KEYS[5]  stat:failed                  STRING counter
-- KEYS[6]  stat:processed:<day>         STRING counter
-- KEYS[7]  stat:failed:<day>            STRING counter
-- ARGV[1]  the job, exactly as in KEYS[1].
-- ARGV[2]  "retry", "dead" or "discard".
-- ARGV[3]  the retry's score (epoch seconds), or "".
-- ARGV[4]  the failed payload for retry or dead, or "".
-- ARGV[5]  now, epoch seconds.
-- ARGV[6]  oldest score kept in dead.
-- ARGV[7]  dead_limit (Sidekiq's trim: ranks 0 .. -dead_limit removed).
-- ARGV[8]  seconds the daily counters live.
-- For a batch member (M > 0; else ARGV[9..] may be absent):
-- KEYS[8]  schedule                     ZSET, where fired batch callbacks wait (due now).
-- KEYS[9..8+3M] per batch level (the batch, then its ancestors): kiq:batch|<bid>
--          HASH, kiq:batch|<bid>|done SET, kiq:batch|<bid>|failed HASH.
-- ARGV[9]  now in the jobs' timestamp unit; ARGV[10] seconds a succeeded
--          batch is kept; ARGV[11] the job's jid; ARGV[12] "fail" or "dead"
--          (its outcome for the batch); ARGV[13] M, then the M bids.
--
-- Returns {1, fired callback payloads...} when the job was failed, {0} when
-- it was already gone; a
-- WRONGTYPE error naming the key (nothing changed) when a key holds the
-- wrong kind of value.
local wants = {'list', 'zset', 'zset'}
local m = tonumber(ARGV[13] or '0')
local chain = m > 0 and kiq_batch_job_chain(9, 13, m, wants) or {}
for i = 1, 8 + 3 * m do
  local want = wants[i]
  if want then
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t ~= 'none' and t ~= want then
      return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
    end
  end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return {0}
end
if ARGV[2] == 'retry' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
elseif ARGV[2] == 'dead' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
  kiq_trim_dead(KEYS[3], ARGV[6], ARGV[7])
end
-- Counters of the wrong type are skipped, as settle.lua skips them.
for _, k in ipairs({4, 5, 6, 7}) do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t == 'none' or t == 'string' then
    redis.pcall('INCR', KEYS[k])
    if k >= 6 then redis.pcall('EXPIRE', KEYS[k], ARGV[8]) end
  end
end
local out = {1}
if m > 0 then
  local ctx = {now = ARGV[5], stamp = ARGV[9], sched = KEYS[8], keep = ARGV[10], fired = {}}
  kiq_batch_member(ctx, chain, ARGV[12], ARGV[11])
  for _, p in ipairs(ctx.fired) do out[#out + 1] = p end
end
return out
