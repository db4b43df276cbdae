//! What the limiters hold right now, cluster-wide, for `kiq.api` and
//! `/metrics`: read-only, from the registry of limiters used lately
//! (`Keys::limiters`) and each limiter's state, computed on Redis's clock.

use crate::error::Result;
use crate::keys::Keys;
use crate::limiter::{Kind, Spec};
use crate::pool::Pool;

/// One limiter's state.
#[derive(Debug, Clone, PartialEq)]
pub struct LimiterState {
    pub kind: Kind,
    pub name: String,
    /// Its size, count or points.
    pub capacity: u64,
    /// Seconds: the period, window or drain time (a concurrent limiter's lock timeout).
    pub interval: f64,
    /// Room in use now: holders, uses this period or window, the bucket's level.
    pub in_use: f64,
    /// Callers waiting for room now.
    pub waiting: u64,
    /// Epoch seconds of the last acquire.
    pub last_used: f64,
}

/// The `max` limiters used most recently, newest first.
pub async fn read(pool: &Pool, keys: &Keys, max: usize) -> Result<Vec<LimiterState>> {
    let mut conn = pool.get();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let now = secs * 1000 + micros / 1000;
    let members: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
        .arg(keys.limiters())
        .arg(0)
        .arg(max.max(1) as i64 - 1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await?;
    let specs: Vec<(Spec, f64)> =
        members.into_iter().filter_map(|(m, score)| Spec::from_registry(&m).map(|s| (s, score))).collect();
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (spec, _) in &specs {
        let (kind, name) = (spec.kind.as_str(), &spec.name);
        let state = keys.limiter(kind, name);
        match spec.kind {
            Kind::Concurrent => pipe.cmd("ZCOUNT").arg(state).arg(format!("({now}")).arg("+inf"),
            Kind::Window => {
                pipe.cmd("ZCOUNT").arg(state).arg(format!("({}", now - spec.interval_ms as i64)).arg("+inf")
            }
            Kind::Bucket => pipe.cmd("HMGET").arg(state).arg("start").arg("n"),
            _ => pipe.cmd("HMGET").arg(state).arg("level").arg("at"),
        };
        pipe.cmd("ZCOUNT").arg(keys.limiter_waiting(kind, name)).arg(format!("({now}")).arg("+inf");
    }
    let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
    let mut out = Vec::with_capacity(specs.len());
    for ((spec, score), pair) in specs.into_iter().zip(replies.chunks(2)) {
        let in_use = (in_use(&spec, &pair[0], now) * 1000.0).round() / 1000.0;
        let waiting: u64 = redis::from_redis_value(pair[1].clone()).unwrap_or(0);
        out.push(LimiterState {
            kind: spec.kind,
            capacity: spec.capacity,
            interval: spec.interval_ms as f64 / 1000.0,
            name: spec.name,
            in_use,
            waiting,
            last_used: score / 1000.0,
        });
    }
    Ok(out)
}

/// A limiter's use now from its state reply.
fn in_use(spec: &Spec, reply: &redis::Value, now: i64) -> f64 {
    let fields = || -> (Option<f64>, Option<f64>) {
        let v: Vec<Option<String>> = redis::from_redis_value(reply.clone()).unwrap_or_default();
        let num = |i: usize| v.get(i).cloned().flatten().and_then(|s| s.parse::<f64>().ok());
        (num(0), num(1))
    };
    match spec.kind {
        Kind::Concurrent | Kind::Window => redis::from_redis_value::<u64>(reply.clone()).unwrap_or(0) as f64,
        Kind::Bucket => match fields() {
            (Some(start), Some(n)) if start as i64 == now - now % spec.interval_ms.max(1) as i64 => n,
            _ => 0.0,
        },
        Kind::Unlimited => 0.0,
        Kind::Leaky | Kind::Points => match fields() {
            (Some(level), Some(at)) => {
                let drained = (now as f64 - at) * spec.capacity as f64 / spec.interval_ms.max(1) as f64;
                (level - drained).max(0.0)
            }
            _ => 0.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn spec(kind: Kind, cap: u64, ms: u64) -> Spec {
        Spec { kind, name: "x".into(), capacity: cap, interval_ms: ms, wait: std::time::Duration::ZERO }
    }

    fn bulk(items: &[&str]) -> Value {
        Value::Array(items.iter().map(|s| Value::BulkString(s.as_bytes().to_vec())).collect())
    }

    #[test]
    fn use_is_computed_on_the_given_clock() {
        assert_eq!(in_use(&spec(Kind::Concurrent, 3, 30_000), &Value::Int(2), 5_000), 2.0);
        let b = spec(Kind::Bucket, 10, 1000);
        assert_eq!(in_use(&b, &bulk(&["5000", "7"]), 5_400), 7.0, "this second");
        assert_eq!(in_use(&b, &bulk(&["4000", "7"]), 5_400), 0.0, "a past second counts nothing");
        let l = spec(Kind::Leaky, 10, 10_000);
        assert_eq!(in_use(&l, &bulk(&["6", "1000"]), 3_000), 4.0, "drains 1 per second");
        assert_eq!(in_use(&l, &Value::Array(vec![Value::Nil, Value::Nil]), 3_000), 0.0);
    }
}
