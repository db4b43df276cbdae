//! A batch's first send: queued jobs as plain `LPUSH`es in one transaction
//! closed by `push_mark.lua`, instead of `push.lua`.
//!
//! Redis spends about twice the CPU on a job passed through a script's ARGV
//! (a Lua string, then a Redis string again for the `LPUSH` inside) as on the
//! same job in a plain `LPUSH`, and that is most of what bounds a bulk
//! enqueue. The transaction keeps `push.lua`'s guarantees: `push_mark.lua`
//! runs in the same atomic step, records the producer's high-water mark, and
//! takes the jobs out again if a key had the wrong type or if the batch
//! landed before (so a transaction that reaches Redis late, after its batch
//! was replayed, pushes nothing twice). A batch sent again after an unknown
//! outcome, and one with scheduled jobs, go through `push.lua`.
//!
//! The transaction runs on a connection of its own, and `MULTI` is sent
//! alone and must be acknowledged first: a `MULTI` refused (an ACL, a proxy)
//! while the rest was already on its way would run the `LPUSH`es outside any
//! transaction, without their mark.

use redis::Value;

use crate::client::{self, Numbered, PushItem};
use crate::error::Result;
use crate::keys::Keys;
use crate::pool::BlockingConn;
use crate::scripts;

/// What Redis did with a fresh batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fresh {
    /// Every job is in its queue.
    Pushed,
    /// Nothing was written: jobs of the batch were pushed before. Send it through `push.lua`.
    Replay,
    /// Nothing was written: these keys hold the wrong kind of value (key, its type).
    WrongType(Vec<(String, String)>),
}

/// Whether a batch may go as a fresh push: it has jobs and none is scheduled.
pub fn eligible(items: &[(u64, PushItem)]) -> bool {
    !items.is_empty() && items.iter().all(|(_, item)| item.at.is_none())
}

/// Pushes a batch of queued jobs (see [`eligible`]), all or nothing, in two
/// round trips: `MULTI` alone, then the jobs, `push_mark.lua` and `EXEC`.
pub async fn push_fresh(
    conn: &mut BlockingConn,
    keys: &Keys,
    producer: &str,
    ttl: std::time::Duration,
    items: &[Numbered<'_>],
) -> Result<Fresh> {
    let (Some((first, _)), Some((last, _))) = (items.first(), items.last()) else {
        return Ok(Fresh::Pushed);
    };
    // Per queue, in order of first appearance: its name, payloads (batch order) and their bytes.
    let mut queues: Vec<(&str, Vec<&str>, usize)> = Vec::new();
    let mut at = 0;
    for (_, item) in items {
        if queues.get(at).is_none_or(|(q, ..)| *q != &*item.queue) {
            at = if let Some(i) = queues.iter().position(|(q, ..)| *q == &*item.queue) {
                i
            } else {
                queues.push((&item.queue, Vec::new(), 0));
                queues.len() - 1
            };
        }
        let (_, payloads, bytes) = &mut queues[at];
        payloads.push(&item.payload);
        *bytes += item.payload.len() + 16;
    }
    // MULTI goes alone and must say OK before the rest is sent: where it is
    // refused (an ACL, a proxy) the LPUSHes would otherwise run on their own,
    // without their mark, and the resend through push.lua would push them twice.
    let multi: String = conn.query(&redis::cmd("MULTI")).await.inspect_err(|_| conn.reset())?;
    if multi != "OK" {
        conn.reset();
        return Err(unexpected("MULTI", &multi).into());
    }
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    let mut sadd = redis::cmd("SADD");
    sadd.arg(keys.queues());
    for (q, ..) in &queues {
        sadd.arg(*q);
    }
    pipe.add_command(sadd);
    for (q, payloads, bytes) in &queues {
        let mut lpush = redis::Cmd::with_capacity(payloads.len() + 2, bytes + 64);
        // One queue's jobs in batch order: the newest ends at the head, as `push.lua` leaves them.
        lpush.arg("LPUSH").arg(keys.queue(q)).arg(payloads.as_slice());
        pipe.add_command(lpush);
    }
    let mut mark = redis::cmd("EVAL");
    // EVAL, not EVALSHA: a script Redis does not know fails only when EXEC runs it, after the LPUSHes.
    mark.arg(scripts::PUSH_MARK_SOURCE).arg(2 + queues.len());
    mark.arg(keys.pushed(producer)).arg(keys.queues());
    for (q, ..) in &queues {
        mark.arg(keys.queue(q));
    }
    mark.arg(ttl.as_millis() as u64).arg(*first).arg(*last);
    for (_, payloads, _) in &queues {
        mark.arg(payloads.len());
    }
    pipe.add_command(mark);
    pipe.add_command(redis::cmd("EXEC"));
    // After any failure the connection may still be inside the transaction
    // (an EXEC that was refused): a new one, and Redis drops the old one's.
    let outcome = conn.query_pipeline(&pipe).await.and_then(exec_outcome).inspect_err(|_| conn.reset())?;
    let words: Vec<String> = redis::from_redis_value(outcome).map_err(redis::RedisError::from)?;
    Ok(match words.split_first() {
        Some((head, _)) if head == "ok" => Fresh::Pushed,
        Some((head, _)) if head == "replay" => Fresh::Replay,
        Some((head, rest)) if head == "wrongtype" => Fresh::WrongType(client::key_types(rest)),
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "push_mark.lua replied with something unknown",
                format!("{words:?}"),
            ))
            .into());
        }
    })
}

/// The last command's reply (`push_mark.lua`'s) from the replies to the
/// queued commands and EXEC; a command Redis refused to queue (`NOPERM`,
/// `OOM`) aborted the transaction, and is the error returned.
fn exec_outcome(mut replies: Vec<Value>) -> redis::RedisResult<Value> {
    let exec = replies.pop().unwrap_or(Value::Nil);
    if let Some(Value::ServerError(refused)) = replies.into_iter().find(|v| matches!(v, Value::ServerError(_))) {
        return Err(refused.into());
    }
    // Not `extract_error` on the whole reply: it would fail on an LPUSH's
    // WRONGTYPE inside it, which push_mark.lua has dealt with.
    match exec {
        Value::Array(mut results) => results.pop().unwrap_or(Value::Nil).extract_error(),
        Value::ServerError(refused) => Err(unwrapped(refused)),
        other => Err(unexpected("EXEC", &format!("{other:?}"))),
    }
}

/// An EXEC refused by the ACL comes back as `EXECABORT Transaction discarded
/// because of: NOPERM ...`: the `NOPERM` is what tells a refusal for good.
fn unwrapped(refused: redis::ServerError) -> redis::RedisError {
    let inner = refused.details().and_then(|d| d.strip_prefix("Transaction discarded because of: "));
    match inner.and_then(|d| d.split_once(' ')) {
        Some((code, detail)) if refused.code() == "EXECABORT" && code == "NOPERM" => {
            redis::make_extension_error(code.to_owned(), Some(detail.to_owned()))
        }
        _ => refused.into(),
    }
}

fn unexpected(what: &str, reply: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply in a batch's transaction",
        format!("{what} answered {reply}"),
    ))
}
