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
-- ARGV[2]     number of jobs N
-- ARGV[3 .. 3+Q-1]   the bare queue names of KEYS[4..] (Q = #KEYS - 3)
-- then per job, 4 values: sequence number, target (0 = schedule, i >= 1 = KEYS[3 + i]),
--                         score (epoch seconds, for the schedule), payload
--
-- Returns {"wrongtype", key, type, key, type, ...} when a key holds the wrong
-- kind of value (nothing written), else {"ok", seq, error, seq, error, ...}
-- listing the jobs Redis refused (an ACL, say), usually none.

local q = #KEYS - 3
local n = tonumber(ARGV[2])
local base = 3 + q
local hw = tonumber(redis.call('HGET', KEYS[1], 'hw') or '0')

local function kind(key)
  return redis.call('TYPE', key)['ok']
end

-- Which targets get new jobs.
local wants_list, wants_zset = {}, false
local maxseq = hw
for i = 0, n - 1 do
  local seq = tonumber(ARGV[base + 4 * i])
  if seq > hw then
    local target = tonumber(ARGV[base + 4 * i + 1])
    if target == 0 then wants_zset = true else wants_list[target] = true end
    if seq > maxseq then maxseq = seq end
  end
end

-- Refusals recorded when jobs of this batch landed before (a replay).
local refused, lines = {'ok'}, {}
local rej = redis.call('HGET', KEYS[1], 'rej')
if rej then
  local asked = {}
  for i = 0, n - 1 do asked[ARGV[base + 4 * i]] = true end
  for seq, err in string.gmatch(rej, '(%d+) ([^\n]*)\n') do
    if asked[seq] and tonumber(seq) <= hw then
      refused[#refused + 1] = seq
      refused[#refused + 1] = err
      lines[#lines + 1] = seq .. ' ' .. err .. '\n'
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

local function refuse(seqs, from, err)
  local msg = string.gsub(tostring(err), '\n', ' ')
  for k = from, #seqs do
    local seq = seqs[k]
    refused[#refused + 1] = seq
    refused[#refused + 1] = msg
    lines[#lines + 1] = seq .. ' ' .. msg .. '\n'
  end
end

-- Per target, in batch order, in slices small enough for Lua's stack.
local SLICE = 1000
local groups = {}
for i = 0, n - 1 do
  local seq = ARGV[base + 4 * i]
  if tonumber(seq) > hw then
    local target = tonumber(ARGV[base + 4 * i + 1])
    local g = groups[target]
    if not g then
      g = {seqs = {}, args = {}}
      groups[target] = g
    end
    g.seqs[#g.seqs + 1] = seq
    if target == 0 then
      g.args[#g.args + 1] = ARGV[base + 4 * i + 2]
    end
    g.args[#g.args + 1] = ARGV[base + 4 * i + 3]
  end
end
for target, g in pairs(groups) do
  local per = (target == 0) and 2 or 1
  local failed_at, err = nil, nil
  for from = 1, #g.args, SLICE * per do
    local to = math.min(from + SLICE * per - 1, #g.args)
    local r
    if target == 0 then
      r = redis.pcall('ZADD', KEYS[3], unpack(g.args, from, to))
    else
      r = redis.pcall('LPUSH', KEYS[3 + target], unpack(g.args, from, to))
    end
    if type(r) == 'table' and r['err'] then
      -- Slices before this one are in; this one and the rest are not.
      failed_at, err = (from - 1) / per + 1, r['err']
      break
    end
  end
  if failed_at then
    refuse(g.seqs, failed_at, err)
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
