-- push_mark.lua: the last command of a fresh batch's transaction
-- (MULTI, SADD queues, one LPUSH per queue, this, EXEC; see
-- `fresh::push_fresh`). Plain LPUSHes cost Redis half of what the same jobs
-- cost passed through a script's ARGV; this script then does what push.lua
-- does around them: it checks the outcome and records the producer's
-- high-water mark in the same atomic step. When the batch cannot stand as
-- pushed it takes the jobs out again (they sit at the head of each list,
-- as nothing runs between the commands of a transaction), so the batch is
-- all in or all out:
--   * jobs of the batch landed before (this transaction ran late, after a
--     replay of its batch, or the batch is replayed from a spool): returns
--     {"replay"}; the caller sends the batch through push.lua, which pushes
--     only what is new;
--   * a key holds the wrong kind of value (the LPUSH or SADD failed):
--     returns {"wrongtype", key, type, ...}, as push.lua does;
--   * anything else fails (the producer's hash of the wrong type, memory
--     full for the mark, a list missing although it was pushed to): an error
--     reply, with the jobs taken out; the caller sends the batch through
--     push.lua, which reports the problem as it always did.
-- Otherwise writes the mark and returns {"ok"}. The checks run under pcall:
-- jobs left in without their mark would be pushed again by the resend.
--
-- KEYS[1]     kiq:pushed|<producer>  HASH: hw, rej (see push.lua)
-- KEYS[2]     queues                 SET of queue names
-- KEYS[3..]   queue:<name>           LIST per queue of the batch
-- ARGV[1]     milliseconds KEYS[1] lives after this push
-- ARGV[2]     the batch's first sequence number
-- ARGV[3]     its last sequence number
-- ARGV[4..]   how many jobs the transaction pushed to KEYS[3..], in order

local function undo()
  for i = 3, #KEYS do
    if redis.call('TYPE', KEYS[i])['ok'] == 'list' then
      redis.call('LTRIM', KEYS[i], tonumber(ARGV[i + 1]), -1)
    end
  end
end

local function mark()
  local ht = redis.call('TYPE', KEYS[1])['ok']
  if ht ~= 'hash' and ht ~= 'none' then
    error(KEYS[1] .. ' holds a ' .. ht)
  end
  local hw = tonumber(redis.call('HGET', KEYS[1], 'hw') or '0')
  if hw >= tonumber(ARGV[2]) then
    return {'replay'}
  end
  local wrong = {}
  for i = 3, #KEYS do
    local t = redis.call('TYPE', KEYS[i])['ok']
    if t == 'none' then
      error(KEYS[i] .. ' is empty after its LPUSH')
    elseif t ~= 'list' then
      wrong[#wrong + 1] = KEYS[i]
      wrong[#wrong + 1] = t
    end
  end
  local qt = redis.call('TYPE', KEYS[2])['ok']
  if qt ~= 'set' and qt ~= 'none' then
    wrong[#wrong + 1] = KEYS[2]
    wrong[#wrong + 1] = qt
  end
  if #wrong > 0 then
    table.insert(wrong, 1, 'wrongtype')
    return wrong
  end
  -- The only write that can be refused (memory); the two after it cannot.
  redis.call('HSET', KEYS[1], 'hw', ARGV[3])
  redis.call('HDEL', KEYS[1], 'rej')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return {'ok'}
end

local ok, res = pcall(mark)
if ok and res[1] == 'ok' then
  return res
end
undo()
if ok then
  return res
end
local why = type(res) == 'table' and res['err'] or tostring(res)
return redis.error_reply('ERR push_mark: nothing of the batch was kept: ' .. why)
