//! Reading batches back: one batch's status (Pro's `Batch::Status`), the
//! listing (`BatchSet`), and the two writes outside a job's life: reopening
//! (which needs the batch's ancestors) and invalidating.

use std::collections::HashMap;

use super::check_bid;
use crate::error::Result;
use crate::keys::Keys;
use crate::pool::Pool;
use crate::scripts;
use crate::timestamp;

/// A batch as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub bid: String,
    /// Jobs added.
    pub total: i64,
    /// Jobs that have not succeeded yet.
    pub pending: i64,
    /// Jobs that failed and have not succeeded since (dead ones included).
    pub failures: i64,
    pub created_at: Option<f64>,
    pub description: Option<String>,
    pub callback_queue: Option<String>,
    /// Ancestors, nearest first (the first is the parent).
    pub up: Vec<String>,
    pub child_count: i64,
    /// Children whose complete / success callbacks have run.
    pub children_complete: i64,
    pub children_succeeded: i64,
    /// Events fired (their callback jobs pushed), and those whose callbacks all ran.
    pub fired: Vec<&'static str>,
    pub done: Vec<&'static str>,
    pub invalidated: bool,
    /// A jobs() block is still streaming its jobs in.
    pub open: bool,
    /// Empty when read without jids (a listing).
    pub failed_jids: Vec<String>,
    pub dead_jids: Vec<String>,
    /// Seconds until Redis drops it.
    pub expires_in: Option<i64>,
}

impl Status {
    pub fn parent_bid(&self) -> Option<&str> {
        self.up.first().map(String::as_str)
    }

    /// Every job ran once and every child completed (the complete event fired).
    pub fn complete(&self) -> bool {
        self.fired.contains(&"complete")
    }

    fn from_hash(bid: &str, h: &HashMap<String, String>, failures: i64, ttl: i64) -> Self {
        let int = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        let flags = |prefix: &str| {
            super::Event::ALL.iter().map(|e| e.as_str()).filter(|e| h.contains_key(&format!("{prefix}{e}"))).collect()
        };
        Self {
            bid: bid.to_owned(),
            total: int("total"),
            pending: int("pending"),
            failures,
            created_at: h.get("created_at").and_then(|v| v.parse().ok()),
            description: h.get("description").cloned(),
            callback_queue: h.get("callback_queue").cloned(),
            up: h.get("up").map(|u| u.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
            child_count: int("kids"),
            children_complete: int("kids_complete"),
            children_succeeded: int("kids_success"),
            fired: flags("fired_"),
            done: flags("done_"),
            invalidated: h.contains_key("invalid"),
            open: h.contains_key("open"),
            failed_jids: Vec::new(),
            dead_jids: Vec::new(),
            expires_in: (ttl >= 0).then_some(ttl),
        }
    }
}

/// One batch, with its failed and dead jids; None when it expired or never existed.
pub async fn read(pool: &Pool, keys: &Keys, bid: &str) -> Result<Option<Status>> {
    check_bid(bid)?;
    let (h, failed, ttl): (HashMap<String, String>, HashMap<String, String>, i64) = redis::pipe()
        .hgetall(keys.batch(bid))
        .hgetall(keys.batch_failed(bid))
        .ttl(keys.batch(bid))
        .query_async(&mut pool.get())
        .await?;
    if h.is_empty() {
        return Ok(None);
    }
    let mut status = Status::from_hash(bid, &h, failed.len() as i64, ttl);
    let mut jids: Vec<(&String, &String)> = failed.iter().collect();
    jids.sort();
    for (jid, state) in jids {
        status.failed_jids.push(jid.clone());
        if state == "dead" {
            status.dead_jids.push(jid.clone());
        }
    }
    Ok(Some(status))
}

/// Up to `count` batches from the `start`-th, newest first (without jids), and
/// how many the listing holds. Batches that expired are dropped from it.
pub async fn list(pool: &Pool, keys: &Keys, start: usize, count: usize) -> Result<(usize, Vec<Status>)> {
    let mut conn = pool.get();
    let stop = (start + count.max(1) - 1) as isize;
    let bids: Vec<String> =
        redis::cmd("ZRANGE").arg(keys.batches()).arg(start).arg(stop).arg("REV").query_async(&mut conn).await?;
    let mut pipe = redis::pipe();
    for bid in &bids {
        pipe.hgetall(keys.batch(bid)).hlen(keys.batch_failed(bid)).ttl(keys.batch(bid));
    }
    let replies: Vec<(HashMap<String, String>, i64, i64)> = if bids.is_empty() {
        Vec::new()
    } else {
        let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        flat.chunks(3)
            .map(|c| {
                let h = redis::from_redis_value(c[0].clone()).unwrap_or_default();
                let f = redis::from_redis_value(c[1].clone()).unwrap_or(0);
                let t = redis::from_redis_value(c[2].clone()).unwrap_or(-2);
                (h, f, t)
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for (bid, (h, failures, ttl)) in bids.iter().zip(replies) {
        if h.is_empty() {
            gone.push(bid.clone());
        } else {
            out.push(Status::from_hash(bid, &h, failures, ttl));
        }
    }
    if !gone.is_empty() {
        let _: i64 = redis::cmd("ZREM").arg(keys.batches()).arg(&gone).query_async(&mut conn).await?;
    }
    let total: usize = redis::cmd("ZCARD").arg(keys.batches()).query_async(&mut conn).await?;
    Ok((total, out))
}

/// A batch's ancestors (nearest first), to reopen it; None when it is gone.
pub async fn ancestors(pool: &Pool, keys: &Keys, bid: &str) -> Result<Option<Vec<String>>> {
    check_bid(bid)?;
    let (exists, up): (bool, Option<String>) =
        redis::pipe().exists(keys.batch(bid)).hget(keys.batch(bid), "up").query_async(&mut pool.get()).await?;
    Ok(exists.then(|| up.unwrap_or_default().split_whitespace().map(str::to_owned).collect()))
}

/// Marks a batch invalid (Pro's `invalidate_all`); false when it is gone.
pub async fn invalidate(pool: &Pool, keys: &Keys, bid: &str) -> Result<bool> {
    check_bid(bid)?;
    let marked: i64 = scripts::BATCH_INVALIDATE
        .key(keys.batch(bid))
        .arg(timestamp::float_json(timestamp::now()))
        .invoke_async(&mut pool.get())
        .await?;
    Ok(marked == 1)
}

/// Whether any of `chain` (a batch and its ancestors) was invalidated.
pub async fn invalidated(pool: &Pool, keys: &Keys, chain: &[String]) -> Result<Vec<bool>> {
    let mut pipe = redis::pipe();
    for bid in chain {
        pipe.hexists(keys.batch(bid), "invalid");
    }
    Ok(pipe.query_async(&mut pool.get()).await?)
}
