-- kill_many.lua: move members of a sorted set to the dead set (the Web UI's
-- "Kill", `kiq kill`), then trim the dead set once, as Sidekiq's
-- DeadSet#kill trims after each ZADD. A member already gone is skipped. A
-- kill is a death, as Sidekiq's death handlers see it: a batch job killed
-- here dies for its batch in the same step (batch_lib.lua, prepended).
--
-- KEYS[1]  the source sorted set (retry or schedule).
-- KEYS[2]  dead                 ZSET, score = time of death in epoch seconds.
-- KEYS[3]  schedule             ZSET, where fired batch callbacks wait (due now).
-- KEYS[4..] 3 keys per batch level (M levels): kiq:batch|<bid> HASH,
--          kiq:batch|<bid>|done SET, kiq:batch|<bid>|failed HASH.
-- ARGV[1]  now, epoch seconds.
-- ARGV[2]  oldest score kept in dead (now - dead_timeout).
-- ARGV[3]  dead_limit: ranks 0 .. -dead_limit are removed (Sidekiq's trim).
-- ARGV[4]  now in the jobs' timestamp unit (callback jobs' created_at).
-- ARGV[5]  seconds a batch is kept after it succeeded.
-- ARGV[6]  M, then ARGV[7 .. 6+M] the bids of the levels.
-- then per member, 3 values: the member, its batch's level numbers ("" for
--   a job of no batch; the batch first, then its ancestors), its jid.
--
-- Returns {moved, fired callback payloads...}; a WRONGTYPE error naming the
-- key (nothing changed) when a key holds the wrong kind of value.
local m = tonumber(ARGV[6])
local bids = {}
for k = 1, m do bids[k] = ARGV[6 + k] end
local levels = kiq_batch_levels(4, bids)
local function wrong(key, want)
  local t = redis.call('TYPE', key)['ok']
  return t ~= 'none' and t ~= want and ('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want) or false
end
local why = wrong(KEYS[2], 'zset') or (m > 0 and (wrong(KEYS[3], 'zset') or kiq_batch_wrong(levels, wrong)))
if why then return redis.error_reply(why) end
local ctx = {now = ARGV[1], stamp = ARGV[4], sched = KEYS[3], keep = ARGV[5], fired = {}}
local moved = 0
for i = 7 + m, #ARGV, 3 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    moved = moved + 1
    if ARGV[i + 1] ~= '' then
      kiq_batch_member(ctx, kiq_batch_chain(levels, ARGV[i + 1]), 'dead', ARGV[i + 2])
    end
  end
end
if moved > 0 then
  kiq_trim_dead(KEYS[2], ARGV[2], ARGV[3])
end
local out = {moved}
for _, p in ipairs(ctx.fired) do out[#out + 1] = p end
return out
