-- batch_lib.lua: batch bookkeeping shared by settle.lua and batch_commit.lua.
-- It is prepended to each of them when they are loaded (scripts/mod.rs),
-- defines functions only, and names no key: every key comes from the calling
-- script's KEYS, so the caller declares everything it touches.
--
-- A batch is three keys: its HASH (counters, flags, callback templates), a SET
-- of the jids that succeeded (and "cb:<jid>" of its callback jobs that ran),
-- and a HASH jid -> "retry" | "dead" of the jobs that failed and have not
-- succeeded since. A chain is a batch and its ancestors, nearest first, each
-- {h = hash, d = done set, f = failed hash, bid = id}.
--
-- Pro's rules: "complete" fires once every job ran (succeeded, or failed at
-- least once) and every child completed; "success" once every job and every
-- child succeeded; "death" on the first job that dies, then in each ancestor.
-- Nothing fires while the hash has "open" (a jobs() block still streaming).
-- A child counts as completed/succeeded for its parent only once its own
-- awaited callback jobs for that event ran (kiq workers: their success is
-- settled here), so a child's callbacks run before its parent's; callbacks
-- that may run elsewhere (a Ruby class) are not awaited. Each event fires once (HSETNX). Its callback jobs go into the
-- schedule set, due now, with a jid derived from the batch, the event and the
-- callback's position; the caller moves them to their queues at once (the
-- scheduler would, a few seconds later, if the caller died first).
--
-- ctx: {now = epoch seconds (text), stamp = created_at in the jobs' unit,
--       sched = the schedule key, keep = seconds a succeeded batch is kept,
--       fired = payloads of the callback jobs written so far}.

local kiq_batch_fire, kiq_batch_done, kiq_batch_check

-- A key created after its batch gets the batch's remaining lifetime.
local function kiq_batch_ttl(h, key)
  local t = redis.call('PTTL', h)
  if t > 0 then redis.call('PEXPIRE', key, t) end
end

-- The status hash callback jobs receive (at most 100 jids of each list).
local function kiq_batch_status(lv, event)
  local v = redis.call('HMGET', lv.h, 'total', 'pending', 'created_at', 'description', 'up', 'kids', 'invalid',
    'fired_complete')
  local failures = redis.call('HLEN', lv.f)
  local failed, dead = {}, {}
  if failures > 0 then
    local cursor, rounds = '0', 0
    repeat
      local r = redis.call('HSCAN', lv.f, cursor, 'COUNT', 200)
      cursor = r[1]
      for i = 1, #r[2], 2 do
        if #failed < 100 then failed[#failed + 1] = cjson.encode(r[2][i]) end
        if r[2][i + 1] == 'dead' and #dead < 100 then dead[#dead + 1] = cjson.encode(r[2][i]) end
      end
      rounds = rounds + 1
    until cursor == '0' or rounds >= 20 or (#failed >= 100 and #dead >= 100)
  end
  local parent = string.match(v[5] or '', '^(%S+)')
  return '{"bid":' .. cjson.encode(lv.bid)
    .. ',"event":' .. cjson.encode(event)
    .. ',"total":' .. (v[1] or '0')
    .. ',"pending":' .. (v[2] or '0')
    .. ',"failures":' .. failures
    .. ',"created_at":' .. (v[3] or 'null')
    .. ',"description":' .. (v[4] and cjson.encode(v[4]) or 'null')
    .. ',"parent_bid":' .. (parent and cjson.encode(parent) or 'null')
    .. ',"child_count":' .. (v[6] or '0')
    .. ',"complete":' .. tostring(v[8] ~= false)
    .. ',"invalidated":' .. tostring(v[7] ~= false)
    .. ',"failed_jids":[' .. table.concat(failed, ',') .. ']'
    .. ',"dead_jids":[' .. table.concat(dead, ',') .. ']}'
end

-- Fires `event` of chain[i] once: writes its callback jobs, or, without any,
-- counts the event as done at once.
kiq_batch_fire = function(ctx, chain, i, event)
  local lv = chain[i]
  if redis.call('HSETNX', lv.h, 'fired_' .. event, ctx.now) == 0 then return end
  local templates = redis.call('HGET', lv.h, 'cb_' .. event)
  local n = 0
  if templates then
    local status = kiq_batch_status(lv, event)
    for head, tail in string.gmatch(templates, '([^%z]*)%z([^%z]*)%z') do
      n = n + 1
      local jid = string.sub(redis.sha1hex(lv.bid .. '|' .. event .. '|' .. n), 1, 24)
      local payload = head .. status .. tail .. jid .. '","created_at":' .. ctx.stamp .. '}'
      redis.call('ZADD', ctx.sched, ctx.now, payload)
      ctx.fired[#ctx.fired + 1] = payload
    end
  end
  local awaited = n > 0 and tonumber(redis.call('HGET', lv.h, 'wait_' .. event) or '0') or 0
  if awaited == 0 then
    kiq_batch_done(ctx, chain, i, event)
  else
    redis.call('HSET', lv.h, 'left_' .. event, awaited)
  end
end

-- Every callback job of `event` ran: tell the parent.
kiq_batch_done = function(ctx, chain, i, event)
  local lv = chain[i]
  if redis.call('HSETNX', lv.h, 'done_' .. event, ctx.now) == 0 then return end
  if event == 'success' then
    redis.call('EXPIRE', lv.h, ctx.keep)
    redis.call('EXPIRE', lv.d, ctx.keep)
    redis.call('EXPIRE', lv.f, ctx.keep)
  end
  local up = chain[i + 1]
  if up == nil or redis.call('EXISTS', up.h) == 0 then return end
  if event == 'death' then
    kiq_batch_fire(ctx, chain, i + 1, 'death')
    return
  end
  redis.call('HINCRBY', up.h, 'kids_' .. event, 1)
  kiq_batch_check(ctx, chain, i + 1)
end

-- Fires whatever chain[i] now qualifies for.
kiq_batch_check = function(ctx, chain, i)
  local lv = chain[i]
  local v = redis.call('HMGET', lv.h, 'open', 'pending', 'kids', 'kids_complete', 'kids_success', 'fired_complete',
    'fired_success')
  if v[1] or not v[2] then return end
  local pending, kids = tonumber(v[2]), tonumber(v[3] or '0')
  if not v[6] and pending <= redis.call('HLEN', lv.f) and tonumber(v[4] or '0') >= kids then
    kiq_batch_fire(ctx, chain, i, 'complete')
  end
  if not v[7] and pending <= 0 and tonumber(v[5] or '0') >= kids then
    kiq_batch_fire(ctx, chain, i, 'success')
  end
end

-- Jobs of chain[1] succeeded, or will never run (expired, skipped): each
-- counted once per jid, however often it runs; one check for all of them.
local function kiq_batch_succeeded(ctx, chain, jids)
  local lv = chain[1]
  if redis.call('EXISTS', lv.h) == 0 then return end
  local fresh = redis.call('EXISTS', lv.d) == 0
  local new = 0
  for from = 1, #jids, 1000 do
    new = new + redis.call('SADD', lv.d, unpack(jids, from, math.min(from + 999, #jids)))
  end
  if new == 0 then return end
  if fresh then kiq_batch_ttl(lv.h, lv.d) end
  redis.call('HINCRBY', lv.h, 'pending', -new)
  if redis.call('HLEN', lv.f) > 0 then
    for from = 1, #jids, 1000 do
      redis.call('HDEL', lv.f, unpack(jids, from, math.min(from + 999, #jids)))
    end
  end
  kiq_batch_check(ctx, chain, 1)
end

-- A job of chain[1] ended: outcome "ok" (see kiq_batch_succeeded), "fail"
-- (failed, to retry or dropped) or "dead". Counted once per jid.
local function kiq_batch_member(ctx, chain, outcome, jid)
  if outcome == 'ok' then
    kiq_batch_succeeded(ctx, chain, {jid})
    return
  end
  local lv = chain[1]
  if redis.call('EXISTS', lv.h) == 0 then return end
  if redis.call('SISMEMBER', lv.d, jid) == 1 then return end
  local was = redis.call('HGET', lv.f, jid)
  local state = (outcome == 'dead') and 'dead' or 'retry'
  if was == state then return end
  local fresh = redis.call('EXISTS', lv.f) == 0
  redis.call('HSET', lv.f, jid, state)
  if fresh then kiq_batch_ttl(lv.h, lv.f) end
  if state == 'dead' then kiq_batch_fire(ctx, chain, 1, 'death') end
  if not was then kiq_batch_check(ctx, chain, 1) end
end

-- A callback job of chain[1]'s `event` succeeded (counted once per jid).
local function kiq_batch_callback_ran(ctx, chain, event, jid)
  local lv = chain[1]
  if not redis.call('HGET', lv.h, 'fired_' .. event) then return end
  local fresh = redis.call('EXISTS', lv.d) == 0
  if redis.call('SADD', lv.d, 'cb:' .. jid) == 0 then return end
  if fresh then kiq_batch_ttl(lv.h, lv.d) end
  if redis.call('HINCRBY', lv.h, 'left_' .. event, -1) <= 0 then
    kiq_batch_done(ctx, chain, 1, event)
  end
end

-- The first problem with the types of a chain's keys, or false.
local function kiq_batch_wrong(chain, wrong)
  for _, lv in ipairs(chain) do
    local why = wrong(lv.h, 'hash') or wrong(lv.d, 'set') or wrong(lv.f, 'hash')
    if why then return why end
  end
  return false
end

-- The key sets KEYS[first ..] (three per batch) with their bids, as levels.
local function kiq_batch_levels(first, bids)
  local out = {}
  for k, bid in ipairs(bids) do
    local at = first + 3 * (k - 1)
    out[k] = {h = KEYS[at], d = KEYS[at + 1], f = KEYS[at + 2], bid = bid}
  end
  return out
end

-- The chain of one job of a recovery script: M levels whose bids are
-- ARGV[at + 1 .. at + M] and whose keys start at KEYS[first], with the
-- schedule key just before them; records in `wants` the type each key needs.
local function kiq_batch_job_chain(first, at, m, wants)
  local bids = {}
  for k = 1, m do bids[k] = ARGV[at + k] end
  wants[first - 1] = 'zset'
  for k = 0, m - 1 do
    wants[first + 3 * k], wants[first + 3 * k + 1], wants[first + 3 * k + 2] = 'hash', 'set', 'hash'
  end
  return kiq_batch_levels(first, bids)
end

-- A chain from level numbers ("3 4": levels[3], then levels[4]).
local function kiq_batch_chain(levels, refs)
  local chain = {}
  for k in string.gmatch(refs, '%d+') do chain[#chain + 1] = levels[tonumber(k)] end
  return chain
end

