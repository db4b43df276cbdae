//! Transactions whose every reply is read. MULTI/EXEC never rolls back: when
//! one command fails at EXEC time (a key of the wrong type, an ACL), the
//! others are applied. So kiq never treats a transaction's error as "nothing
//! happened" (and repeats what did happen): it runs each one here, learns
//! exactly which commands failed, and reports them by name.

use redis::aio::ConnectionLike;
use redis::{Pipeline, Value};

/// What a transaction did: every command's reply, and a description of each
/// command that failed (`HSET <key>: WRONGTYPE ...`).
#[derive(Debug, Default)]
pub struct Applied {
    pub replies: Vec<Value>,
    pub failed: Vec<String>,
}

/// Runs `pipe` as one MULTI/EXEC. Its commands must not be `.ignore()`d (their
/// replies are matched to them). An `Err` means EXEC's reply never arrived:
/// the transaction may or may not have been applied.
pub async fn atomic<C: ConnectionLike>(pipe: &mut Pipeline, conn: &mut C) -> redis::RedisResult<Applied> {
    pipe.atomic().ignore_errors();
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let failed = pipe
        .cmd_iter()
        .zip(&replies)
        .filter_map(|(cmd, reply)| match reply {
            Value::ServerError(e) => Some(format!("{}: {e}", describe(cmd))),
            _ => None,
        })
        .collect();
    Ok(Applied { replies, failed })
}

/// A command's name and first argument (its key), for messages.
fn describe(cmd: &redis::Cmd) -> String {
    let mut parts = cmd.args_iter().take(2).map(|a| match a {
        redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    });
    let name = parts.next().unwrap_or_default();
    match parts.next() {
        Some(key) => format!("{name} {key}"),
        None => name,
    }
}
