-- periodic.lua: enqueue a periodic job for one minute, unless that minute
-- (or a later one) was already enqueued for the entry, so each due minute is
-- enqueued exactly once whatever process leads and however leadership moves.
--
-- KEYS[1]  kiq:periodic          HASH entry id -> last minute enqueued (epoch seconds).
-- KEYS[2]  queue:<name>          LIST the job goes to.
-- KEYS[3]  queues                SET of queue names.
-- ARGV[1]  the entry's id.
-- ARGV[2]  the minute (epoch seconds).
-- ARGV[3]  the payload.
-- ARGV[4]  the queue's name.
--
-- Returns 1 when enqueued, 0 when that minute was done already.
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if last >= tonumber(ARGV[2]) then
  return 0
end
for i, want in ipairs({'hash', 'list', 'set'}) do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
