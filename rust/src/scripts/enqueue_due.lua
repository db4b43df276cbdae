-- enqueue_due.lua: move due jobs of the schedule or retry set to their queues.
-- The caller read the members and prepared each new payload (with a fresh
-- enqueued_at); a member another process already moved is skipped, so a job
-- is moved exactly once and is never outside both places.
--
-- KEYS[1]    the sorted set (schedule or retry).
-- KEYS[2]    queues              SET of queue names.
-- KEYS[2+i]  queue:<name> of job i.
-- ARGV[3i-2] job i's member as stored in KEYS[1].
-- ARGV[3i-1] job i's payload to push.
-- ARGV[3i]   job i's queue name.
--
-- Returns {moved, stuck, key, problem, ...}: how many jobs were moved, how
-- many stay because their queue (or the queues set) holds the wrong kind of
-- value or refused the push, and those keys with the problem.
local moved, stuck = 0, 0
local seen, wrong = {}, {}
-- A key of the wrong type keeps its jobs in the set (reported), never loses them.
local function bad(key, want)
  if seen[key] == nil then
    local t = redis.call('TYPE', key)['ok']
    seen[key] = t ~= 'none' and t ~= want
    if seen[key] then
      wrong[#wrong + 1] = key
      wrong[#wrong + 1] = t
    end
  end
  return seen[key]
end
local queues_bad = bad(KEYS[2], 'set')
for i = 1, #KEYS - 2 do
  local at = 3 * i
  if redis.call('ZSCORE', KEYS[1], ARGV[at - 2]) then
    if queues_bad or bad(KEYS[2 + i], 'list') then
      stuck = stuck + 1
    else
      local r = redis.pcall('LPUSH', KEYS[2 + i], ARGV[at - 1])
      if type(r) == 'table' and r['err'] then
        stuck = stuck + 1
        wrong[#wrong + 1] = KEYS[2 + i]
        wrong[#wrong + 1] = r['err']
      else
        redis.call('ZREM', KEYS[1], ARGV[at - 2])
        redis.call('SADD', KEYS[2], ARGV[at])
        moved = moved + 1
      end
    end
  end
end
local out = {moved, stuck}
for _, v in ipairs(wrong) do out[#out + 1] = v end
return out
