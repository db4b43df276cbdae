-- push.lua: push a batch of new jobs exactly once, whatever happens to the
-- reply. Each job carries its producer's sequence number; the producer's
-- high-water mark (the highest number applied) is stored with the jobs in
-- this one atomic step, so a replayed batch (a lost or timed-out reply)
-- pushes only what did not land before. Key types are checked before
-- anything is written, so a stray key of the wrong type never leaves a
-- batch half applied: the reply names the keys and nothing changes.
--
-- KEYS[1]     kiq:pushed|<producer>  HASH: hw (highest sequence applied),
--                                    rej (jobs of the last batch Redis refused: "seq error" lines)
-- KEYS[2]     queues                 SET of queue names
-- KEYS[3]     schedule               ZSET of jobs to run later
-- KEYS[4..]   queue:<name>           LIST per queue of the batch
-- ARGV[1]     milliseconds KEYS[1] lives after this push
-- ARGV[2]     number of runs R
-- ARGV[3 .. 3+Q-1]   the bare queue names of KEYS[4..] (Q = #KEYS - 3)
-- then R runs, 3 values each: first sequence number, job count, target
--   (0 = schedule, i >= 1 = KEYS[3 + i]); a run is jobs in batch order with
--   consecutive numbers and one target (one run for a batch of one queue)
-- then the jobs, run after run: the payload of a queued job, or the score
--   (epoch seconds) and payload of a scheduled one (ZADD's order)
--
-- Runs let a batch go to LPUSH/ZADD straight from ARGV, with no Lua work per job.
--
-- Returns {"wrongtype", key, type, key, type, ...} when a key holds the wrong
-- kind of value (nothing written), else {"ok", seq, error, seq, error, ...}
-- listing the jobs Redis refused (an ACL, say), usually none.

local q = #KEYS - 3
local nruns = tonumber(ARGV[2])
local rbase = 3 + q
local hw = tonumber(redis.call('HGET', KEYS[1], 'hw') or '0')

local function kind(key)
  return redis.call('TYPE', key)['ok']
end

-- The runs, with where their jobs' values start in ARGV.
local runs = {}
local at = rbase + 3 * nruns
local maxseq = hw
local wants_list, wants_zset = {}, false
for r = 0, nruns - 1 do
  local first = tonumber(ARGV[rbase + 3 * r])
  local count = tonumber(ARGV[rbase + 3 * r + 1])
  local target = tonumber(ARGV[rbase + 3 * r + 2])
  local per = (target == 0) and 2 or 1
  runs[#runs + 1] = {first = first, count = count, target = target, per = per, at = at}
  at = at + per * count
  local last = first + count - 1
  if last > hw then
    if target == 0 then wants_zset = true else wants_list[target] = true end
    if last > maxseq then maxseq = last end
  end
end

local function seqtext(seq)
  return string.format('%d', seq)
end

-- Refusals recorded when jobs of this batch landed before (a replay).
local refused, lines = {'ok'}, {}
local rej = redis.call('HGET', KEYS[1], 'rej')
if rej then
  for seq, err in string.gmatch(rej, '(%d+) ([^\n]*)\n') do
    local s = tonumber(seq)
    if s <= hw then
      for _, run in ipairs(runs) do
        if s >= run.first and s < run.first + run.count then
          refused[#refused + 1] = seq
          refused[#refused + 1] = err
          lines[#lines + 1] = seq .. ' ' .. err .. '\n'
          break
        end
      end
    end
  end
end
if maxseq == hw then
  return refused
end

local wrong = {}
local function expect(key, want)
  local t = kind(key)
  if t ~= 'none' and t ~= want then
    wrong[#wrong + 1] = key
    wrong[#wrong + 1] = t
  end
end
local any_list = false
for target in pairs(wants_list) do
  expect(KEYS[3 + target], 'list')
  any_list = true
end
if any_list then expect(KEYS[2], 'set') end
if wants_zset then expect(KEYS[3], 'zset') end
if #wrong > 0 then
  table.insert(wrong, 1, 'wrongtype')
  return wrong
end

-- The mark goes first: once it is written, nothing later is refused for memory.
redis.call('HSET', KEYS[1], 'hw', maxseq)
redis.call('PEXPIRE', KEYS[1], ARGV[1])

-- Per target, the new jobs' runs (what landed before skipped), in batch order.
local groups, order = {}, {}
for _, run in ipairs(runs) do
  local skip = math.max(0, math.min(run.count, hw - run.first + 1))
  if skip < run.count then
    local g = groups[run.target]
    if not g then
      g = {}
      groups[run.target] = g
      order[#order + 1] = run.target
    end
    g[#g + 1] = {first = run.first + skip, count = run.count - skip, from = run.at + run.per * skip}
  end
end

local function refuse(g, failed_at, err)
  -- Jobs from the failed_at-th of the target's new jobs on were not written.
  local msg = string.gsub(tostring(err), '\n', ' ')
  local k = 0
  for _, part in ipairs(g) do
    for j = 0, part.count - 1 do
      k = k + 1
      if k >= failed_at then
        local seq = seqtext(part.first + j)
        refused[#refused + 1] = seq
        refused[#refused + 1] = msg
        lines[#lines + 1] = seq .. ' ' .. msg .. '\n'
      end
    end
  end
end

-- In slices small enough for Lua's stack; straight from ARGV when a target
-- has one run (the usual batch), else gathered into one list first.
local SLICE = 1000
for _, target in ipairs(order) do
  local g = groups[target]
  local per = (target == 0) and 2 or 1
  local src, lo, hi
  if #g == 1 then
    src, lo, hi = ARGV, g[1].from, g[1].from + per * g[1].count - 1
  else
    src, lo = {}, 1
    for _, part in ipairs(g) do
      for i = part.from, part.from + per * part.count - 1 do
        src[#src + 1] = ARGV[i]
      end
    end
    hi = #src
  end
  local failed_at, err = nil, nil
  for from = lo, hi, SLICE * per do
    local to = math.min(from + SLICE * per - 1, hi)
    local r
    if target == 0 then
      r = redis.pcall('ZADD', KEYS[3], unpack(src, from, to))
    else
      r = redis.pcall('LPUSH', KEYS[3 + target], unpack(src, from, to))
    end
    if type(r) == 'table' and r['err'] then
      -- Slices before this one are in; this one and the rest are not.
      failed_at, err = (from - lo) / per + 1, r['err']
      break
    end
  end
  if failed_at then
    refuse(g, failed_at, err)
  end
  if target ~= 0 and failed_at ~= 1 then
    -- Jobs in the list run either way; the set only lists the queue for the Web UI.
    redis.pcall('SADD', KEYS[2], ARGV[2 + target])
  end
end
if #lines > 0 then
  redis.call('HSET', KEYS[1], 'rej', table.concat(lines))
else
  redis.call('HDEL', KEYS[1], 'rej')
end
return refused
