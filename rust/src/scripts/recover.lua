-- recover.lua: hand back one job that a process held when it died (or when
-- it was recycled for memory), if it is still in the process's in-progress
-- list: back to the right end of its queue (the next to run), or, for a job
-- blamed for more deaths than allowed (a poison pill), into the dead set. The
-- blame count and the move are one atomic step, so a recovery interrupted
-- and run again never counts a death twice. A batch job buried (or dropped)
-- as a poison pill is a death for its batch (batch_lib.lua, prepended).
--
-- KEYS[1]  kiq:wip|<identity>|<queue>   LIST, the process's in-progress jobs.
-- KEYS[2]  queue:<queue>                LIST the job returns to.
-- KEYS[3]  queues                       SET of queue names.
-- KEYS[4]  dead                         ZSET, score = time of death.
-- KEYS[5]  kiq:recoveries               HASH blame key -> deaths blamed on the job.
-- ARGV[1]  the job, exactly as in KEYS[1].
-- ARGV[2]  the payload to requeue (the job marked suspect, or ARGV[1] itself).
-- ARGV[3]  the job's blame key when this death is blamed on it, else "".
-- ARGV[4]  max_recoveries: deaths allowed before it is a poison pill.
-- ARGV[5]  the payload for the dead set, once it is one.
-- ARGV[6]  "bury", or "drop" for a job with dead: false.
-- ARGV[7]  now, epoch seconds.
-- ARGV[8]  oldest score kept in dead.
-- ARGV[9]  dead_limit (Sidekiq's trim: ranks 0 .. -dead_limit removed).
-- ARGV[10] the queue's name.
-- ARGV[11] seconds KEYS[5] lives (72 hours).
-- For a batch job (M > 0; else ARGV[12..] may be absent):
-- KEYS[6]  schedule                     ZSET, where fired batch callbacks wait (due now).
-- KEYS[7..6+3M] per batch level (the batch, then its ancestors): kiq:batch|<bid>
--          HASH, kiq:batch|<bid>|done SET, kiq:batch|<bid>|failed HASH.
-- ARGV[12] now in the jobs' timestamp unit; ARGV[13] seconds a succeeded
--          batch is kept; ARGV[14] the job's jid; ARGV[15] M, then the M bids.
--
-- Returns {0} when the job was already gone, else {1, outcome, deaths,
-- fired callback payloads...} with outcome "requeued", "buried" or
-- "dropped"; a WRONGTYPE error naming the key (nothing changed) when a key
-- holds the wrong kind of value.
local wants = {'list', 'list', 'set', 'zset', 'hash'}
local m = tonumber(ARGV[15] or '0')
local chain = m > 0 and kiq_batch_job_chain(7, 15, m, wants) or {}
for i, want in ipairs(wants) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return {0}
end
local deaths = 0
if ARGV[3] ~= '' then
  deaths = redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
  redis.call('EXPIRE', KEYS[5], ARGV[11])
end
if deaths > tonumber(ARGV[4]) then
  redis.call('HDEL', KEYS[5], ARGV[3])
  local outcome = 'dropped'
  if ARGV[6] ~= 'drop' then
    redis.call('ZADD', KEYS[4], ARGV[7], ARGV[5])
    kiq_trim_dead(KEYS[4], ARGV[8], ARGV[9])
    outcome = 'buried'
  end
  local out = {1, outcome, deaths}
  if m > 0 then
    local ctx = {now = ARGV[7], stamp = ARGV[12], sched = KEYS[6], keep = ARGV[13], fired = {}}
    kiq_batch_member(ctx, chain, 'dead', ARGV[14])
    for _, p in ipairs(ctx.fired) do out[#out + 1] = p end
  end
  return out
end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[10])
return {1, 'requeued', deaths}
