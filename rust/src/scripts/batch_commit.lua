-- batch_commit.lua: one step of ending a batch's jobs() block, exactly once
-- (batch_lib.lua is prepended). The first step creates the batch (registering
-- it with its parent) or reopens it; each step moves jobs the builder staged
-- and pushes the jobs given here to their queues (or the schedule), counting
-- them in the batch; the last step ends the block. A block that needs more
-- than one step keeps "open" on the batch until its last step, so no callback
-- fires while its jobs are still arriving; the last step fires what is due
-- (an empty batch fires at once). Each step carries the builder's sequence
-- number, recorded with its effects, so a step sent again after a lost reply
-- changes nothing. Key types and the batch's state are checked and every
-- staged job is read before anything is written.
--
-- KEYS[1]     kiq:pushed|<builder>        HASH: hw, the builder's highest step applied
-- KEYS[2]     queues                      SET of queue names
-- KEYS[3]     schedule                    ZSET: scheduled jobs, and fired callbacks (due now)
-- KEYS[4]     kiq:batches                 ZSET bid -> created_at (the listing)
-- KEYS[5]     kiq:staged|<builder>        LIST of staged jobs
-- KEYS[6 .. 5+3M]  per level (the batch, then its ancestors): kiq:batch|<bid> HASH,
--                  kiq:batch|<bid>|done SET, kiq:batch|<bid>|failed HASH
-- KEYS[6+3M ..]    queue:<name> LIST per queue the builder used (Q of them)
-- ARGV[1]     milliseconds KEYS[1] lives after this step
-- ARGV[2]     this step's sequence number
-- ARGV[3]     "new" (create the batch), "add" (reopen it) or "more" (a later step)
-- ARGV[4]     "1" for the last step, else "0"
-- ARGV[5]     how many staged jobs to move now (from the left of KEYS[5])
-- ARGV[6]     now, epoch seconds
-- ARGV[7]     now in the jobs' timestamp unit (callback jobs' created_at)
-- ARGV[8]     seconds a batch is kept after it succeeded
-- ARGV[9]     seconds a live batch is kept (renewed at every block)
-- ARGV[10]    M, then ARGV[11 .. 10+M] the bids of the levels
-- then Q and Q queue names (of KEYS[6+3M ..], in order)
-- then, for "new": description, callback_queue, ancestors ("P G", nearest
--   first), the callback templates of complete, success and death ("" for
--   none; see batch_lib.lua), and how many of each event's callbacks are
--   awaited; 9 values in every step ("" when not "new")
-- then J and J jobs, each "<queue>\n<score or empty>\n<payload>" (the format
--   of staged jobs: a score schedules the job)
--
-- Returns {"ok", fired callback payloads...}, {"dup"} for a step applied
-- before, {"wrongtype", key, why}, or {"gone"} (the batch expired or never
-- existed), {"succeeded"} (it already succeeded: nothing can be added),
-- {"exists"} (a new bid already taken), {"noparent"} (the parent is gone or
-- succeeded); nothing is written but for "ok".

local hw = tonumber(redis.call('HGET', KEYS[1], 'hw') or '0')
local seq = tonumber(ARGV[2])
if seq <= hw then return {'dup'} end
local mode, last, move = ARGV[3], ARGV[4] == '1', tonumber(ARGV[5])
local m = tonumber(ARGV[10])
local bids = {}
for k = 1, m do bids[k] = ARGV[10 + k] end
local chain = kiq_batch_levels(6, bids)
local at = 11 + m
local q = tonumber(ARGV[at])
local queue_key = {}
for k = 1, q do queue_key[ARGV[at + k]] = KEYS[5 + 3 * m + k] end
at = at + q + 1
local meta = {}
for k = 0, 8 do meta[k + 1] = ARGV[at + k] end
at = at + 9
local j = tonumber(ARGV[at])

local function wrong(key, want)
  local t = redis.call('TYPE', key)['ok']
  return t ~= 'none' and t ~= want and (key .. ' holds a ' .. t .. ', not a ' .. want) or false
end
local why = wrong(KEYS[1], 'hash') or wrong(KEYS[2], 'set') or wrong(KEYS[3], 'zset') or wrong(KEYS[4], 'zset')
  or wrong(KEYS[5], 'list') or kiq_batch_wrong(chain, wrong)
for _, key in pairs(queue_key) do why = why or wrong(key, 'list') end
if why then return {'wrongtype', why} end

local h = chain[1].h
local exists = redis.call('EXISTS', h) == 1
if mode == 'new' then
  if exists then return {'exists'} end
  local parent = chain[2]
  if parent and (redis.call('EXISTS', parent.h) == 0 or redis.call('HEXISTS', parent.h, 'fired_success') == 1) then
    return {'noparent'}
  end
elseif not exists then
  return {'gone'}
elseif mode == 'add' and redis.call('HEXISTS', h, 'fired_success') == 1 then
  return {'succeeded'}
end

-- Every job this step pushes, read (and checked) before any write.
local jobs = {}
local staged = move > 0 and redis.call('LRANGE', KEYS[5], 0, move - 1) or {}
for _, e in ipairs(staged) do jobs[#jobs + 1] = e end
for k = 1, j do jobs[#jobs + 1] = ARGV[at + k] end
local lists, order, sched = {}, {}, {}
for _, e in ipairs(jobs) do
  local name, score, payload = string.match(e, '^([^\n]*)\n([^\n]*)\n(.*)$')
  if not payload or (score == '' and not queue_key[name]) then
    return redis.error_reply('ERR batch_commit: a job for an undeclared queue ' .. tostring(name))
  end
  if score ~= '' then
    sched[#sched + 1] = score
    sched[#sched + 1] = payload
  else
    if not lists[name] then
      lists[name] = {}
      order[#order + 1] = name
    end
    local l = lists[name]
    l[#l + 1] = payload
  end
end

redis.call('HSET', KEYS[1], 'hw', seq)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local live = ARGV[9]
if mode == 'new' then
  redis.call('HSET', h, 'created_at', ARGV[6], 'total', 0, 'pending', 0, 'up', meta[3])
  if meta[1] ~= '' then redis.call('HSET', h, 'description', meta[1]) end
  if meta[2] ~= '' then redis.call('HSET', h, 'callback_queue', meta[2]) end
  for k, event in ipairs({'complete', 'success', 'death'}) do
    if meta[3 + k] ~= '' then
      redis.call('HSET', h, 'cb_' .. event, meta[3 + k], 'wait_' .. event, meta[6 + k])
    end
  end
  redis.call('EXPIRE', h, live)
  redis.call('ZADD', KEYS[4], ARGV[6], bids[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', tonumber(ARGV[6]) - tonumber(live))
  if chain[2] then redis.call('HINCRBY', chain[2].h, 'kids', 1) end
elseif mode == 'add' then
  for _, key in ipairs({h, chain[1].d, chain[1].f}) do redis.call('EXPIRE', key, live) end
end
if not last and mode ~= 'more' then redis.call('HSET', h, 'open', 1) end

if #staged > 0 then redis.call('LTRIM', KEYS[5], #staged, -1) end
local SLICE = 1000
for _, name in ipairs(order) do
  local l = lists[name]
  for from = 1, #l, SLICE do
    redis.call('LPUSH', queue_key[name], unpack(l, from, math.min(from + SLICE - 1, #l)))
  end
  redis.call('SADD', KEYS[2], name)
end
for from = 1, #sched, 2 * SLICE do
  redis.call('ZADD', KEYS[3], unpack(sched, from, math.min(from + 2 * SLICE - 1, #sched)))
end
if #jobs > 0 then
  redis.call('HINCRBY', h, 'total', #jobs)
  redis.call('HINCRBY', h, 'pending', #jobs)
end

local ctx = {now = ARGV[6], stamp = ARGV[7], sched = KEYS[3], keep = ARGV[8], fired = {}}
if last then
  redis.call('HDEL', h, 'open')
  kiq_batch_check(ctx, chain, 1)
end
local out = {'ok'}
for _, p in ipairs(ctx.fired) do out[#out + 1] = p end
return out
