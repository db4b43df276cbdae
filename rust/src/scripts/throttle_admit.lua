-- throttle_admit.lua: the throttle check of a batch of fetched jobs, before
-- any of them takes a thread (`throttle.rs`). A job is admitted when its key
-- has room under both its limits: `concurrency` (running jobs of the class
-- and key, one hold token each, with an expiry its process refreshes while
-- it runs) and `rate` (starts in any window of `period`). Admitting takes the
-- room; a refused job takes nothing (the caller parks it). Sent again after
-- a failure, it admits again the jobs it admitted before (their tokens are
-- there), so no room is taken twice. Time is Redis's clock. Key types are
-- checked before any write.
--
-- KEYS[2g-1]  kiq:throttle|<class>|<key>       ZSET hold token -> expiry ms, of key group g (from 1)
-- KEYS[2g]    kiq:throttle-rate|<class>|<key>  ZSET start token -> time ms, of key group g
-- ARGV[1]     number of jobs N
-- ARGV[2]     1 when this check is sent again after a failure (it may have been applied)
-- ARGV[3]     number of key groups G
-- then per group, 4 values: concurrency (0: none), lock ms, rate count (0: none), rate period ms
-- then per job, 2 values: hold token, group g
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
local again = ARGV[2] == '1'
local out = {now}
-- Each key's count, read (after pruning) once and kept up to date here.
local counts, touched = {}, {}
local function count(key, upto)
  if counts[key] == nil then
    local n = redis.call('ZCARD', key)
    if n > 0 then
      redis.call('ZREMRANGEBYSCORE', key, '-inf', upto)
      n = redis.call('ZCARD', key)
    end
    counts[key] = n
  end
  return counts[key]
end
local groups = tonumber(ARGV[3])
for i = 0, tonumber(ARGV[1]) - 1 do
  local b = 4 + 4 * groups + 2 * i
  local token, g = ARGV[b], tonumber(ARGV[b + 1])
  local gb = 4 + 4 * (g - 1)
  local conc, lock = tonumber(ARGV[gb]), tonumber(ARGV[gb + 1])
  local rate, period = tonumber(ARGV[gb + 2]), tonumber(ARGV[gb + 3])
  local holds, starts = KEYS[2 * g - 1], KEYS[2 * g]
  local ok, retry, by_conc = true, 0, 0
  local done = false
  if again then
    if conc > 0 then done = redis.call('ZSCORE', holds, token) else done = redis.call('ZSCORE', starts, token) end
  end
  if not done then
    if conc > 0 and count(holds, now) >= conc then
      local first = redis.call('ZRANGE', holds, 0, 0, 'WITHSCORES')
      ok, by_conc, retry = false, 1, tonumber(first[2]) - now
    end
    if rate > 0 then
      local used = count(starts, now - period)
      if used >= rate then
        local frees = redis.call('ZRANGE', starts, used - rate, used - rate, 'WITHSCORES')
        ok, retry = false, math.max(retry, tonumber(frees[2]) + period - now)
      end
    end
    if ok then
      if conc > 0 then
        redis.call('ZADD', holds, now + lock, token)
        counts[holds] = counts[holds] + 1
        touched[holds] = lock
      end
      if rate > 0 then
        redis.call('ZADD', starts, now, token)
        counts[starts] = counts[starts] + 1
        touched[starts] = period
      end
    end
  end
  out[#out + 1] = ok and 1 or 0
  out[#out + 1] = math.max(1, retry)
  out[#out + 1] = by_conc
end
for key, ms in pairs(touched) do
  redis.call('PEXPIRE', key, ms)
end
return out
