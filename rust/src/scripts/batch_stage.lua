-- batch_stage.lua: set aside a chunk of a batch's jobs while its jobs() block
-- is still running, exactly once: nothing reaches a queue until the block
-- ends (batch_commit.lua moves them), so a block that raises pushes nothing.
-- The builder's sequence number is recorded with the chunk, so a chunk sent
-- again after a lost reply is not staged twice.
--
-- KEYS[1]  kiq:pushed|<builder>   HASH: hw, the builder's highest step applied
-- KEYS[2]  kiq:staged|<builder>   LIST of staged jobs, "<queue>\n<score or empty>\n<payload>"
-- ARGV[1]  milliseconds KEYS[1] lives after this step
-- ARGV[2]  this step's sequence number
-- ARGV[3]  milliseconds KEYS[2] lives (an abandoned builder's jobs go away)
-- ARGV[4..] the jobs, in order
--
-- Returns 1 when staged, 0 for a step applied before; a WRONGTYPE error
-- naming the key (nothing written) when a key holds the wrong kind of value.
for i, want in ipairs({'hash', 'list'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local seq = tonumber(ARGV[2])
if seq <= tonumber(redis.call('HGET', KEYS[1], 'hw') or '0') then return 0 end
redis.call('HSET', KEYS[1], 'hw', seq)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local SLICE = 1000
for from = 4, #ARGV, SLICE do
  redis.call('RPUSH', KEYS[2], unpack(ARGV, from, math.min(from + SLICE - 1, #ARGV)))
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
