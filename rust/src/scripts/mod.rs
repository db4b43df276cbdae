//! The Lua scripts, one per file; each file's header lists its KEYS and ARGV.
//! `redis::Script` (and [`eval`], for the per-batch commands built in one
//! buffer) sends EVALSHA and reloads a script Redis has forgotten (after a
//! restart, failover or SCRIPT FLUSH), so no job waits on a boot-time load.
//! `batch_lib.lua` is not a script: it defines the batch bookkeeping the
//! scripts that settle jobs and commit batches share, and is prepended to them;
//! `dead_lib.lua` likewise holds the dead-set trim of every script that buries a job.

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, RedisResult, Script};

/// An `EVALSHA` of `script` with `keys` keys, to which the caller appends the
/// keys and arguments: one command buffer sized up front (`args` values,
/// `bytes` bytes), for the per-batch scripts where a `ScriptInvocation`
/// would allocate each argument on its own and then copy them all. Send it
/// with [`eval`].
pub fn evalsha(script: &Script, keys: usize, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(args + 3, bytes + 64);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    cmd
}

/// Sends an [`evalsha`] command; when Redis does not know the script (a new,
/// restarted or flushed server) loads it and sends the command again.
pub async fn eval<T: FromRedisValue, C: ConnectionLike>(cmd: &Cmd, script: &Script, conn: &mut C) -> RedisResult<T> {
    match cmd.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        sent => sent,
    }
}

pub static FETCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fetch.lua")));
pub static REQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("requeue.lua")));
pub static UNFETCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unfetch.lua")));
pub static ENQUEUE_DUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("enqueue_due.lua")));
pub static BURY: LazyLock<Script> =
    LazyLock::new(|| Script::new(concat!(include_str!("dead_lib.lua"), include_str!("bury.lua"))));
pub static REELECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("reelect.lua")));
pub static RESIGN: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("resign.lua")));
pub static RECOVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(include_str!("batch_lib.lua"), include_str!("dead_lib.lua"), include_str!("recover.lua")))
});
pub static PUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("push.lua")));
/// Sent as text (`EVAL`) inside a transaction: see `fresh.rs`.
pub const PUSH_MARK_SOURCE: &str = include_str!("push_mark.lua");
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(include_str!("batch_lib.lua"), include_str!("dead_lib.lua"), include_str!("settle.lua")))
});
pub static BATCH_COMMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new(concat!(include_str!("batch_lib.lua"), include_str!("batch_commit.lua"))));
pub static BATCH_STAGE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("batch_stage.lua")));
pub static BATCH_INVALIDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("batch_invalidate.lua")));
pub static UNIQUE_PUSH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unique_push.lua")));
pub static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unlock.lua")));
pub static PERIODIC: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("periodic.lua")));
pub static FAIL_ORPHAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(include_str!("batch_lib.lua"), include_str!("dead_lib.lua"), include_str!("fail_orphan.lua")))
});
pub static KILL_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(include_str!("batch_lib.lua"), include_str!("dead_lib.lua"), include_str!("kill_many.lua")))
});
pub static LIMIT_ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limit_acquire.lua")));
pub static LIMIT_RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("limit_release.lua")));
pub static THROTTLE_ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("throttle_admit.lua")));
pub static THROTTLE_RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("throttle_release.lua")));
pub static THROTTLE_REFRESH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("throttle_refresh.lua")));
