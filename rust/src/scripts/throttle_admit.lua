-- throttle_admit.lua: the throttle check of a batch of fetched jobs, before
-- any of them takes a thread (`throttle.rs`). A job is admitted when its key
-- has room under both its limits: `concurrency` (running jobs of the class
-- and key, one hold token each, with an expiry its process refreshes while
-- it runs) and `rate` (starts in any window of `period`). Admitting takes the
-- room; a refused job takes nothing (the caller parks it). Sent again after
-- a lost reply, it admits again the jobs it admitted before (their tokens are
-- there), so no room is taken twice. Time is Redis's clock. Key types are
-- checked before any write.
--
-- KEYS[2g-1]  kiq:throttle|<class>|<key>       ZSET hold token -> expiry ms, of key group g (from 1)
-- KEYS[2g]    kiq:throttle-rate|<class>|<key>  ZSET start token -> time ms, of key group g
-- ARGV[1]     number of jobs N
-- then per job, 6 values: hold token, group g, concurrency (0: none),
--             lock ms, rate count (0: none), rate period ms
--
-- Returns {now ms, then per job 3 values: 1 admitted / 0 refused, ms until
-- room may come back, 1 if the concurrency limit refused it}.

for i = 1, #KEYS do
  local ty = redis.call('TYPE', KEYS[i])['ok']
  if ty ~= 'none' and ty ~= 'zset' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. ty .. ', not a zset')
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {now}
local pruned = {}
local function prune(key, upto)
  if not pruned[key] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', upto)
    pruned[key] = true
  end
end
for i = 0, tonumber(ARGV[1]) - 1 do
  local b = 1 + 6 * i
  local token, g = ARGV[b + 1], tonumber(ARGV[b + 2])
  local conc, lock = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local count, period = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  local holds, starts = KEYS[2 * g - 1], KEYS[2 * g]
  local ok, retry, by_conc = true, 0, 0
  local again
  if conc > 0 then again = redis.call('ZSCORE', holds, token) else again = redis.call('ZSCORE', starts, token) end
  if not again then
    if conc > 0 then
      prune(holds, now)
      if redis.call('ZCARD', holds) >= conc then
        local first = redis.call('ZRANGE', holds, 0, 0, 'WITHSCORES')
        ok, by_conc, retry = false, 1, tonumber(first[2]) - now
      end
    end
    if count > 0 then
      prune(starts, now - period)
      local used = redis.call('ZCARD', starts)
      if used >= count then
        local frees = redis.call('ZRANGE', starts, used - count, used - count, 'WITHSCORES')
        ok, retry = false, math.max(retry, tonumber(frees[2]) + period - now)
      end
    end
    if ok then
      if conc > 0 then
        redis.call('ZADD', holds, now + lock, token)
        redis.call('PEXPIRE', holds, lock)
      end
      if count > 0 then
        redis.call('ZADD', starts, now, token)
        redis.call('PEXPIRE', starts, period)
      end
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = math.max(1, retry)
  out[#out + 1] = by_conc
end
return out
