-- dead_lib.lua: not a script. The dead-set trim every script that buries a
-- job shares; scripts/mod.rs prepends it to them (as batch_lib.lua).
-- The Rust side passes its two values from RetryPolicy::dead_trim.
--
-- kiq_trim_dead(dead, oldest, limit): drop entries scored before `oldest`
-- (now - dead_timeout), then ranks 0 .. -limit, Sidekiq's exact trim (so the
-- set settles at dead_limit - 1 entries, as Sidekiq's does).
local function kiq_trim_dead(dead, oldest, limit)
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', oldest)
  redis.call('ZREMRANGEBYRANK', dead, 0, -tonumber(limit))
end
