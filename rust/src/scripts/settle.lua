-- settle.lua: write the results of finished jobs, exactly once. For each job:
-- its retry, dead or schedule entry (if any), its removal from this
-- process's in-progress list and, for a batch job or callback, its batch
-- bookkeeping (batch_lib.lua, prepended: counted once per jid, callbacks
-- fired once); then Sidekiq's processed/failed counters. Each result carries
-- a number; the highest number applied is stored in the same atomic step, so
-- a batch sent again after a lost reply changes nothing twice (no job in two
-- places, no counter counted twice). Key types are checked before anything
-- is written: a result that needs a key holding the wrong kind of value is
-- refused (its job stays in progress), the others go on.
--
-- KEYS[1]    kiq:acked|<identity>         HASH: hw, the highest result number applied
-- KEYS[2]    retry                        ZSET
-- KEYS[3]    dead                         ZSET
-- KEYS[4]    stat:processed               STRING counter
-- KEYS[5]    stat:failed                  STRING counter
-- KEYS[6]    stat:processed:<day>         STRING counter
-- KEYS[7]    stat:failed:<day>            STRING counter
-- KEYS[8]    kiq:stat:expired             STRING counter
-- KEYS[9]    schedule                     ZSET: jobs rescheduled over a rate limit or parked by a
--                                         throttle, and fired batch callbacks (due now)
-- KEYS[10..] kiq:wip|<identity>|<queue>   LIST per queue of the batch, and
--            kiq:parked|<queue>|<class>|<key>  ZSET per throttle key of a parked job
-- then, last, 3 keys per batch level (M levels): kiq:batch|<bid> HASH,
--            kiq:batch|<bid>|done SET, kiq:batch|<bid>|failed HASH
-- ARGV[1]    milliseconds KEYS[1] lives after this write
-- ARGV[2]    seconds the daily counters live
-- ARGV[3]    now (epoch seconds): the dead entries' score
-- ARGV[4]    the oldest score kept in dead
-- ARGV[5]    dead_limit (Sidekiq's trim: ranks 0 .. -dead_limit removed)
-- ARGV[6]    N, the number of results given in full (plain ones come last, below)
-- ARGV[7]    now in the jobs' timestamp unit (callback jobs' created_at)
-- ARGV[8]    seconds a batch is kept after it succeeded
-- ARGV[9]    milliseconds a kiq:parked key lives after a job is parked in it
-- ARGV[10]   M, then ARGV[11 .. 10+M] the bids of the batch levels
-- then per result, 10 values: number, in-progress list (i: KEYS[9 + i]),
--   kind ("done", "retry", "dead", "expired", "schedule"), retry or schedule
--   score or "", the payload for retry/dead/schedule or "", the job as in its list, counters
--   ("p" processed, "pf" processed and failed, "" neither), its batch part
--   ("" none; "m <outcome> <levels>" for a member, outcome "ok", "fail" or
--   "dead"; "c <event> <levels>" for a callback job that succeeded; levels
--   are level numbers, the batch first, then its ancestors), its jid, and
--   the kiq:parked key a scheduled job is also listed in (j: KEYS[9 + j]) or 0
-- then P, the number of plain results (done, counted as processed, nothing
--   else to write: most jobs), and per plain result 3 values: number,
--   in-progress list (i: KEYS[9 + i]), the job as in its list. Shorter
--   than the 10 above, because passing arguments is much of this script's cost.
-- then G, the number of cuts, and per cut 7 + H values: in-progress list
--   (i: KEYS[9 + i]), K, the highest number of its results, F, the job
--   expected F-th from the list's right end, the job expected K-th from it,
--   H, then H offsets from the right end (1: the end), ascending. A cut is
--   the K jobs at the list's right end (the caller's model of the list,
--   wip.rs), all finished but the H at those offsets, which still run: the
--   K are removed by count and those H read before and pushed back after,
--   in their order, so no finished job's payload is passed. F is the offset
--   of its first finished job (the ends checked are finished jobs, whose
--   payloads the caller has).
--
-- Returns {{number, reason, ...} of the results refused, {payload, ...} of
-- the batch callback jobs written to the schedule set, {i, ...} the lists
-- whose cut did not find the jobs expected at its two ends}. When that third
-- part is not empty, nothing was written: the caller writes these results
-- again without cuts.

local hw = tonumber(redis.call('HGET', KEYS[1], 'hw') or '0')
local n = tonumber(ARGV[6])
local m = tonumber(ARGV[10])
local base = 10 + m
local function at(i, k) return ARGV[base + 10 * i + k] end
local bids = {}
for k = 1, m do bids[k] = ARGV[10 + k] end
local levels = kiq_batch_levels(#KEYS - 3 * m + 1, bids)
local ctx = {now = ARGV[3], stamp = ARGV[7], sched = KEYS[9], keep = ARGV[8], fired = {}}

local types = {}
local function wrong(key, want)
  if types[key] == nil then
    local t = redis.call('TYPE', key)['ok']
    types[key] = (t ~= 'none' and t ~= want) and ('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want) or false
  end
  return types[key]
end

local pbase = base + 10 * n + 1
local np = tonumber(ARGV[pbase])

local cbase = pbase + 1 + 3 * np
local ncuts = tonumber(ARGV[cbase])
local cuts = {}
do
  local a = cbase + 1
  for g = 1, ncuts do
    local c = {i = ARGV[a], k = tonumber(ARGV[a + 1]), seq = tonumber(ARGV[a + 2]), f = tonumber(ARGV[a + 3]),
               first = ARGV[a + 4], last = ARGV[a + 5], holes = {}}
    c.wip = KEYS[9 + tonumber(c.i)]
    for h = 1, tonumber(ARGV[a + 6]) do c.holes[h] = tonumber(ARGV[a + 6 + h]) end
    a = a + 7 + #c.holes
    cuts[g] = c
  end
end

local maxseq = hw
for i = 0, n - 1 do
  local seq = tonumber(at(i, 1))
  if seq > maxseq then maxseq = seq end
end
for k = pbase + 1, pbase + 3 * np - 2, 3 do
  local seq = tonumber(ARGV[k])
  if seq > maxseq then maxseq = seq end
end
for _, c in ipairs(cuts) do
  if c.seq > maxseq then maxseq = c.seq end
end
if maxseq == hw then
  return {{}, {}, {}}
end
-- The cuts are checked before anything is written, and made first: the
-- LREMs below remove by value, and with a payload listed twice one could
-- take a job inside a cut, which would then take a job beyond it.
local mismatched = {}
for _, c in ipairs(cuts) do
  if c.seq > hw then
    -- (An absent list passes wrong(), and then finds no job at either end.)
    if wrong(c.wip, 'list') or redis.call('LINDEX', c.wip, -c.f) ~= c.first
        or redis.call('LINDEX', c.wip, -c.k) ~= c.last then
      mismatched[#mismatched + 1] = c.i
    end
  end
end
if #mismatched > 0 then
  return {{}, {}, mismatched}
end
-- Counters of the wrong type are skipped (never a reason to keep a job in progress).
local count_ok = {}
for k = 4, 8 do count_ok[k] = not wrong(KEYS[k], 'string') end

redis.call('HSET', KEYS[1], 'hw', maxseq)
redis.call('PEXPIRE', KEYS[1], ARGV[1])

local refused = {}
local processed, failed, expired, buried = 0, 0, 0, false
for _, c in ipairs(cuts) do
  if c.seq > hw then
    -- The running jobs, newest first: pushed back on the right, the oldest ends there.
    local back = {}
    for h = #c.holes, 1, -1 do back[#back + 1] = redis.call('LINDEX', c.wip, -c.holes[h]) end
    redis.call('LTRIM', c.wip, 0, -(c.k + 1))
    if #back > 0 then redis.call('RPUSH', c.wip, unpack(back)) end
    processed = processed + c.k - #c.holes
  end
end
-- Batch jobs that succeeded, per chain: counted together after the loop.
local succeeded, order = {}, {}
for i = 0, n - 1 do
  if tonumber(at(i, 1)) > hw then
    local wip = KEYS[9 + tonumber(at(i, 2))]
    local kind = at(i, 3)
    local spec = at(i, 8)
    local chain = nil
    local parked = tonumber(at(i, 10)) > 0 and KEYS[9 + tonumber(at(i, 10))]
    local why = wrong(wip, 'list')
    if not why and kind == 'retry' then why = wrong(KEYS[2], 'zset') end
    if not why and kind == 'dead' then why = wrong(KEYS[3], 'zset') end
    if not why and kind == 'schedule' then why = wrong(KEYS[9], 'zset') end
    if not why and parked then why = wrong(parked, 'zset') end
    if not why and spec ~= '' then
      chain = kiq_batch_chain(levels, string.match(spec, '^%S+ %S+ (.*)$') or '')
      why = wrong(KEYS[9], 'zset') or kiq_batch_wrong(chain, wrong)
    end
    local r
    if not why and kind == 'retry' then
      r = redis.pcall('ZADD', KEYS[2], at(i, 4), at(i, 5))
    elseif not why and kind == 'dead' then
      r = redis.pcall('ZADD', KEYS[3], ARGV[3], at(i, 5))
      buried = true
    elseif not why and kind == 'schedule' then
      r = redis.pcall('ZADD', KEYS[9], at(i, 4), at(i, 5))
      if parked and not (type(r) == 'table' and r['err']) then
        redis.pcall('ZADD', parked, at(i, 4), at(i, 5))
        redis.pcall('PEXPIRE', parked, ARGV[9])
      end
    end
    if not why and type(r) == 'table' and r['err'] then why = r['err'] end
    if not why then
      r = redis.pcall('LREM', wip, -1, at(i, 6))
      if type(r) == 'table' and r['err'] then why = r['err'] end
    end
    if why then
      refused[#refused + 1] = at(i, 1)
      refused[#refused + 1] = why
    else
      if chain and #chain > 0 then
        local role, what, refs = string.match(spec, '^(%S+) (%S+) (.*)$')
        if role == 'm' and what == 'ok' then
          local g = succeeded[refs]
          if not g then
            g = {chain = chain, jids = {}}
            succeeded[refs] = g
            order[#order + 1] = refs
          end
          g.jids[#g.jids + 1] = at(i, 9)
        elseif role == 'm' then
          kiq_batch_member(ctx, chain, what, at(i, 9))
        else
          kiq_batch_callback_ran(ctx, chain, what, at(i, 9))
        end
      end
      local c = at(i, 7)
      if c == 'p' or c == 'pf' then processed = processed + 1 end
      if c == 'pf' then failed = failed + 1 end
      if kind == 'expired' then expired = expired + 1 end
    end
  end
end
-- The plain results: the loop most jobs go through, so kept lean (the type
-- check once per list). fetch.lua pushes jobs on the left, so finished jobs
-- are mostly the oldest of their list, at its right end among a few still
-- running. That end is read once and cut off with one LTRIM, the jobs still
-- running pushed back in their order; a job not found there is removed with
-- an LREM. Either way the occurrence removed is the one nearest the right end
-- (an LREM -1 per job did the same at twice the cost).
local lists, want = {}, {}
for k = pbase + 1, pbase + 3 * np - 2, 3 do
  local seq = ARGV[k]
  if tonumber(seq) > hw then
    local wip = KEYS[9 + ARGV[k + 1]]
    local why = wrong(wip, 'list')
    if why then
      refused[#refused + 1] = seq
      refused[#refused + 1] = why
    else
      local w = want[wip]
      if not w then
        w = {jobs = {}, n = 0}
        want[wip] = w
        lists[#lists + 1] = wip
      end
      local job = ARGV[k + 2]
      w.jobs[job] = (w.jobs[job] or 0) + 1
      w.n = w.n + 1
      processed = processed + 1
    end
  end
end
-- The most jobs still running read past (and pushed back) per list: the
-- rest of the finished jobs, if any, are then removed one LREM each.
local SLACK = 64
for _, wip in ipairs(lists) do
  local jobs, n = want[wip].jobs, want[wip].n
  local tail = redis.call('LRANGE', wip, -(n + SLACK), -1)
  local keep, found, j = {}, 0, #tail
  while j >= 1 and found < n and #keep < SLACK do
    local c = jobs[tail[j]]
    if c and c > 0 then
      jobs[tail[j]] = c - 1
      found = found + 1
    else
      keep[#keep + 1] = tail[j]
    end
    j = j - 1
  end
  if found > 0 then
    redis.call('LTRIM', wip, 0, j - #tail - 1)
    if #keep > 0 then
      -- keep runs from the right end inwards; RPUSH wants them outwards.
      local back = {}
      for i = #keep, 1, -1 do back[#back + 1] = keep[i] end
      redis.call('RPUSH', wip, unpack(back))
    end
  end
  if found < n then
    for job, c in pairs(jobs) do
      for _ = 1, c do redis.call('LREM', wip, '-1', job) end
    end
  end
end
for _, refs in ipairs(order) do
  kiq_batch_succeeded(ctx, succeeded[refs].chain, succeeded[refs].jids)
end
if buried then
  kiq_trim_dead(KEYS[3], ARGV[4], ARGV[5])
end
local function bump(total, daily, by)
  if by > 0 then
    if count_ok[total] then redis.pcall('INCRBY', KEYS[total], by) end
    if count_ok[daily] then
      redis.pcall('INCRBY', KEYS[daily], by)
      redis.pcall('EXPIRE', KEYS[daily], ARGV[2])
    end
  end
end
bump(4, 6, processed)
bump(5, 7, failed)
if expired > 0 and count_ok[8] then redis.pcall('INCRBY', KEYS[8], expired) end
return {refused, ctx.fired, {}}
