-- recover.lua: move one job out of a dead process's in-progress list, if it
-- is still there: back to the right end of its queue (the next to run), or,
-- for a job recovered too often (a poison pill), into the dead set.
--
-- KEYS[1]  kiq:wip|<identity>|<queue>   LIST, the dead process's in-progress jobs.
-- KEYS[2]  queue:<queue>                LIST the job returns to.
-- KEYS[3]  queues                       SET of queue names.
-- KEYS[4]  dead                         ZSET, score = time of death.
-- ARGV[1]  the job, exactly as in KEYS[1].
-- ARGV[2]  "requeue", "bury" or "drop".
-- ARGV[3]  the payload written to the dead set (bury).
-- ARGV[4]  now, epoch seconds.
-- ARGV[5]  oldest score kept in dead.
-- ARGV[6]  dead_limit (Sidekiq's trim: ranks 0 .. -dead_limit removed).
-- ARGV[7]  the queue's name.
--
-- Returns 1 when the job was moved, 0 when it was already gone; a WRONGTYPE
-- error naming the key (nothing moved) when a key holds the wrong kind of value.
local function expect(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local bad
if ARGV[2] == 'requeue' then
  bad = expect(KEYS[2], 'list') or expect(KEYS[3], 'set')
elseif ARGV[2] == 'bury' then
  bad = expect(KEYS[4], 'zset')
end
if bad then
  return bad
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if ARGV[2] == 'requeue' then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[7])
elseif ARGV[2] == 'bury' then
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[6]))
end
return 1
